# fairshare: build, install and uninstall.
#
#   make                      build the release binaries, man pages and completions
#   sudo make install         install under PREFIX (default /usr/local)
#   sudo make uninstall       remove what install put there (the policy and state stay)
#   make deb                  build a Debian package in target/deb/
#
# Every path can be overridden, and DESTDIR stages an install elsewhere:
#   make install PREFIX=/usr DESTDIR=/tmp/stage
# The PAM module goes where the system's PAM modules are (PAMDIR, found from
# pam_unix.so), whatever PREFIX is: PAM only loads modules from there.

PREFIX       ?= /usr/local
DESTDIR      ?=
BINDIR       ?= $(PREFIX)/bin
SBINDIR      ?= $(PREFIX)/sbin
DATADIR      ?= $(PREFIX)/share
MANDIR       ?= $(DATADIR)/man
SYSCONFDIR   ?= /etc
UNITDIR      ?= $(PREFIX)/lib/systemd/system
GENERATORDIR ?= $(PREFIX)/lib/systemd/system-generators
PAMDIR       ?= $(shell for d in /lib/*-linux-gnu/security /usr/lib64/security /usr/lib/*-linux-gnu/security /lib/security /usr/lib/security; do [ -e "$$d/pam_unix.so" ] && { echo "$$d"; break; }; done)
# pam-auth-update (Debian, Ubuntu) reads its profiles from here only.
PAMCONFIGDIR ?= /usr/share/pam-configs
BASHCOMPDIR  ?= $(DATADIR)/bash-completion/completions
ZSHCOMPDIR   ?= $(DATADIR)/zsh/site-functions
FISHCOMPDIR  ?= $(DATADIR)/fish/vendor_completions.d
# Grafana dashboard and Prometheus alert rules (README "Watching a host or a fleet")
MONITORDIR   ?= $(DATADIR)/fairshare/monitoring

CARGO        ?= cargo
CARGOFLAGS   ?= --locked
OUT          := target/release
GEN          := target/gen

POLICY       := $(DESTDIR)$(SYSCONFDIR)/fairshare/policy.d/00-defaults.yaml
METRICSCONF  := $(DESTDIR)$(SYSCONFDIR)/default/fairshare-metrics

.PHONY: all build gen install uninstall deb clean

all: build gen

build:
	$(CARGO) build $(CARGOFLAGS) --release -p fairshared -p fairshare-ctl -p pam_fairshare

gen:
	rm -rf $(GEN)
	$(CARGO) run $(CARGOFLAGS) --release -q -p xtask -- man $(GEN)/man > /dev/null
	$(CARGO) run $(CARGOFLAGS) --release -q -p xtask -- completions $(GEN)/completions > /dev/null

install:
	@[ -f $(OUT)/fairshared ] && [ -d $(GEN)/man ] || { echo "run make first (as your own user), then sudo make install"; exit 1; }
	@[ -n "$(PAMDIR)" ] || { echo "cannot find the PAM module directory (no pam_unix.so); set PAMDIR="; exit 1; }
	install -D -m 755 $(OUT)/fairshared $(DESTDIR)$(SBINDIR)/fairshared
	install -D -m 755 $(OUT)/fairshare-ctl $(DESTDIR)$(BINDIR)/fairshare-ctl
	install -D -m 644 $(OUT)/libpam_fairshare.so $(DESTDIR)$(PAMDIR)/pam_fairshare.so
	install -d $(DESTDIR)$(UNITDIR)
	install -m 644 etc/systemd/*.socket etc/systemd/*.timer $(DESTDIR)$(UNITDIR)/
	@# the units name the binaries where this install puts them
	for f in etc/systemd/*.in; do \
	  sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@BINDIR@|$(BINDIR)|g' "$$f" > $(DESTDIR)$(UNITDIR)/$$(basename "$$f" .in); \
	  chmod 644 $(DESTDIR)$(UNITDIR)/$$(basename "$$f" .in); \
	done
	@# gives fairshared the network when nsswitch.conf names LDAP, NIS, ... (see the file)
	install -D -m 755 etc/systemd/fairshare-nss-generator $(DESTDIR)$(GENERATORDIR)/fairshare-nss-generator
	install -D -m 644 etc/pam-configs/fairshare $(DESTDIR)$(PAMCONFIGDIR)/fairshare
	install -d $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8
	install -m 644 $(GEN)/man/*.1 $(DESTDIR)$(MANDIR)/man1/
	install -m 644 $(GEN)/man/*.5 $(DESTDIR)$(MANDIR)/man5/
	install -m 644 $(GEN)/man/*.8 $(DESTDIR)$(MANDIR)/man8/
	install -D -m 644 $(GEN)/completions/bash/fairshare-ctl $(DESTDIR)$(BASHCOMPDIR)/fairshare-ctl
	install -D -m 644 $(GEN)/completions/bash/fairshared $(DESTDIR)$(BASHCOMPDIR)/fairshared
	install -D -m 644 $(GEN)/completions/zsh/_fairshare-ctl $(DESTDIR)$(ZSHCOMPDIR)/_fairshare-ctl
	install -D -m 644 $(GEN)/completions/zsh/_fairshared $(DESTDIR)$(ZSHCOMPDIR)/_fairshared
	install -D -m 644 $(GEN)/completions/fish/fairshare-ctl.fish $(DESTDIR)$(FISHCOMPDIR)/fairshare-ctl.fish
	install -D -m 644 $(GEN)/completions/fish/fairshared.fish $(DESTDIR)$(FISHCOMPDIR)/fairshared.fish
	install -D -m 644 monitoring/grafana/fairshare-dashboard.json $(DESTDIR)$(MONITORDIR)/fairshare-dashboard.json
	install -D -m 644 monitoring/prometheus/fairshare-alerts.yml $(DESTDIR)$(MONITORDIR)/fairshare-alerts.yml
	@# The policy is the admin's: installed once, never overwritten.
	@if [ -e $(POLICY) ]; then echo "keeping $(POLICY)"; else install -D -m 644 etc/policy.d/00-defaults.yaml $(POLICY); fi
	@if [ -e $(METRICSCONF) ]; then echo "keeping $(METRICSCONF)"; else install -D -m 644 etc/default/fairshare-metrics $(METRICSCONF); fi
	@# the policy default as systemd's drop-in for user slices (no DESTDIR: on this host)
	@[ -n "$(DESTDIR)" ] || $(DESTDIR)$(SBINDIR)/fairshared --write-defaults
	@[ -n "$(DESTDIR)" ] || printf '\nNext:\n  systemctl daemon-reload && systemctl enable --now fairshared.socket fairshared.service\n  pam-auth-update --enable fairshare    # Debian/Ubuntu; see README "Enable on a host" for others\n'

uninstall:
	@# Take the module out of the PAM stack before the module goes away.
	@if [ -z "$(DESTDIR)" ] && command -v pam-auth-update > /dev/null && [ -e $(PAMCONFIGDIR)/fairshare ]; then \
	  pam-auth-update --package --remove fairshare; fi
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
	  systemctl disable --now fairshared.service fairshared.socket fairshare-metrics.timer 2> /dev/null || true; fi
	@# the policy default drop-ins and the runtime values fairshared set: slices get systemd's own
	@# defaults back (without the binary, or under DESTDIR: every 40-fairshare.conf fairshared wrote)
	@if [ -z "$(DESTDIR)" ] && [ -x $(SBINDIR)/fairshared ]; then $(SBINDIR)/fairshared --remove-defaults; \
	else for f in $(DESTDIR)$(SYSCONFDIR)/systemd/system/user-*.slice.d/40-fairshare.conf; do \
	  [ -f "$$f" ] && head -n 1 "$$f" | grep -q '^# Written by fairshared' || continue; \
	  rm -f "$$f"; rmdir "$$(dirname "$$f")" 2> /dev/null || true; done; fi
	rm -f $(DESTDIR)$(SBINDIR)/fairshared $(DESTDIR)$(BINDIR)/fairshare-ctl $(DESTDIR)$(PAMDIR)/pam_fairshare.so
	rm -f $(DESTDIR)$(UNITDIR)/fairshared.service $(DESTDIR)$(UNITDIR)/fairshared.socket \
	      $(DESTDIR)$(UNITDIR)/fairshare-metrics.service $(DESTDIR)$(UNITDIR)/fairshare-metrics.timer
	rm -f $(DESTDIR)$(GENERATORDIR)/fairshare-nss-generator
	rm -f $(DESTDIR)$(PAMCONFIGDIR)/fairshare
	rm -f $(DESTDIR)$(MANDIR)/man1/fairshare-ctl*.1 $(DESTDIR)$(MANDIR)/man5/fairshare-policy.5 \
	      $(DESTDIR)$(MANDIR)/man8/fairshared.8 $(DESTDIR)$(MANDIR)/man8/pam_fairshare.8
	rm -f $(DESTDIR)$(BASHCOMPDIR)/fairshare-ctl $(DESTDIR)$(BASHCOMPDIR)/fairshared \
	      $(DESTDIR)$(ZSHCOMPDIR)/_fairshare-ctl $(DESTDIR)$(ZSHCOMPDIR)/_fairshared \
	      $(DESTDIR)$(FISHCOMPDIR)/fairshare-ctl.fish $(DESTDIR)$(FISHCOMPDIR)/fairshared.fish
	rm -f $(DESTDIR)$(MONITORDIR)/fairshare-dashboard.json $(DESTDIR)$(MONITORDIR)/fairshare-alerts.yml
	-rmdir $(DESTDIR)$(MONITORDIR) $(DESTDIR)$(DATADIR)/fairshare 2> /dev/null
	@[ -n "$(DESTDIR)" ] || { grep -ls pam_fairshare /etc/pam.d/* && echo "^ still name pam_fairshare: remove those lines" || true; }
	@[ -n "$(DESTDIR)" ] || [ ! -d /run/systemd/system ] || systemctl daemon-reload
	@echo "kept: $(SYSCONFDIR)/fairshare (policy), $(SYSCONFDIR)/default/fairshare-metrics and /var/lib/fairshare (state); remove them by hand if you want them gone"

deb: all
	packaging/deb/build.sh

clean:
	$(CARGO) clean
