//! Text that fairshare puts on a terminal it does not own.
//!
//! A process name is chosen by whoever runs the process: `/proc/self/comm`
//! takes any 15 bytes, escape sequences and newlines included, and the kernel
//! reports a killed process under that name. Written as it is to someone's
//! terminal, such a name could move the cursor, rewrite what is on screen,
//! set the window title, or fake a second line that looks like it came from
//! fairshare. Two functions keep that from happening:
//!
//! * [`escape`] shows untrusted bytes (a process name) exactly and
//!   harmlessly: printable ASCII stays, everything else is written as an
//!   escape (`\n`, `\x1b`, `\u{e9}`), and `\` itself as `\\`, so different
//!   names never look the same. The result is printable ASCII only.
//! * [`line`] cleans a line of text fairshare composed itself (a notice, the
//!   login line), as a last guard: every character that is not printable
//!   ASCII becomes `?` (tabs and line breaks a space).
//!
//! Both cut long text at a character limit, ending in `...`, and never cut
//! an escape in half. Only printable ASCII (0x20 to 0x7e) ever comes out:
//! terminals that are not in UTF-8 mode (the Linux console can be one) read
//! bytes 0x80 to 0x9f as control codes, and those bytes occur inside UTF-8.
//! The line breaks around a notice are added by the writer, not taken from
//! any text.

use std::fmt::Write as _;

/// What a cut-off text ends in.
pub const ELLIPSIS: &str = "...";

/// Untrusted bytes as printable ASCII, at most `max` characters long.
///
/// Printable ASCII is kept, `\` becomes `\\`, tab, newline and carriage
/// return become `\t`, `\n`, `\r`, other control bytes `\xNN`, valid UTF-8
/// beyond ASCII `\u{NNNN}`, and bytes that are not valid UTF-8 `\xNN`. A
/// result longer than `max` is cut after a whole escape and ends in `...`
/// (then it is at most `max` long; a `max` below 3 just cuts).
pub fn escape(raw: &[u8], max: usize) -> String {
    let mut out = String::new();
    let mut cut = false;
    'chunks: for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            let piece = escape_char(c);
            if !fits(&out, &piece, max) {
                cut = true;
                break 'chunks;
            }
            out.push_str(&piece);
        }
        for b in chunk.invalid() {
            let piece = format!("\\x{b:02x}");
            if !fits(&out, &piece, max) {
                cut = true;
                break 'chunks;
            }
            out.push_str(&piece);
        }
    }
    if cut {
        shorten(&mut out, max);
    }
    out
}

fn escape_char(c: char) -> String {
    match c {
        '\\' => "\\\\".into(),
        '\t' => "\\t".into(),
        '\n' => "\\n".into(),
        '\r' => "\\r".into(),
        ' '..='~' => c.into(),
        c if c.is_ascii() => format!("\\x{:02x}", c as u32),
        c => {
            let mut s = String::new();
            let _ = write!(s, "\\u{{{:x}}}", c as u32);
            s
        }
    }
}

/// Whether `piece` can follow `out` and still leave room for the ellipsis
/// should anything come after it. Everything here is ASCII: bytes are chars.
fn fits(out: &str, piece: &str, max: usize) -> bool {
    out.len() + piece.len() <= max
}

/// Makes room for the ellipsis at the end of an escaped text that was cut,
/// taking off whole escapes only.
fn shorten(out: &mut String, max: usize) {
    if max < ELLIPSIS.len() {
        out.truncate(max);
        return;
    }
    let keep = max - ELLIPSIS.len();
    while out.len() > keep {
        // Take off the last unit: a plain character, or a whole escape.
        let start = last_unit_start(out);
        out.truncate(start);
    }
    out.push_str(ELLIPSIS);
}

/// Where the last unit of an escaped text starts: its last character, or the
/// backslash that begins the escape it ends.
fn last_unit_start(s: &str) -> usize {
    let b = s.as_bytes();
    let n = b.len();
    if n == 0 {
        return 0;
    }
    // Walk the text from the start to find unit boundaries; escapes are
    // short, and this runs only when a text is cut.
    let mut i = 0;
    let mut last = 0;
    while i < n {
        last = i;
        i += unit_len(&b[i..]);
    }
    last
}

/// The length of the unit at the start of an escaped text.
fn unit_len(b: &[u8]) -> usize {
    if b.first() != Some(&b'\\') || b.len() < 2 {
        return 1;
    }
    match b[1] {
        b'x' => 4.min(b.len()),
        b'u' => b.iter().position(|&c| c == b'}').map_or(b.len(), |p| p + 1),
        _ => 2,
    }
}

/// A line of fairshare's own text, made safe for any terminal, at most
/// `max` characters long.
///
/// Tabs, newlines and carriage returns become spaces; every other character
/// outside printable ASCII (control characters, DEL, the C1 range, format
/// and bidirectional controls, anything beyond ASCII) becomes `?`. A line
/// longer than `max` is cut and ends in `...`. Cleaning a clean line changes
/// nothing.
pub fn line(text: &str, max: usize) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => ' ',
            ' '..='~' => c,
            _ => '?',
        })
        .collect();
    if cleaned.len() <= max {
        return cleaned;
    }
    if max < ELLIPSIS.len() {
        return cleaned[..max].to_string();
    }
    let mut out = cleaned[..max - ELLIPSIS.len()].to_string();
    out.push_str(ELLIPSIS);
    out
}

/// Whether `text` is all printable ASCII: what [`escape`] and [`line`]
/// always give.
pub fn is_clean(text: &str) -> bool {
    text.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reverses [`escape`] (for the tests: different inputs never escape to
    /// the same text).
    fn unescape(s: &str) -> Vec<u8> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let n = unit_len(&b[i..]);
            let unit = &s[i..i + n];
            match unit.as_bytes() {
                [b'\\', b'\\'] => out.push(b'\\'),
                [b'\\', b't'] => out.push(b'\t'),
                [b'\\', b'n'] => out.push(b'\n'),
                [b'\\', b'r'] => out.push(b'\r'),
                [b'\\', b'x', ..] => out.push(u8::from_str_radix(&unit[2..], 16).unwrap()),
                [b'\\', b'u', ..] => {
                    let c =
                        char::from_u32(u32::from_str_radix(&unit[3..unit.len() - 1], 16).unwrap())
                            .unwrap();
                    out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
                other => out.extend_from_slice(other),
            }
            i += n;
        }
        out
    }

    #[test]
    fn a_name_with_escape_sequences_and_a_newline() {
        // what /proc/PID/comm held in the experiment: "e\e[31m\nvil\e]0;"
        let name = b"e\x1b[31m\nvil\x1b]0;";
        let shown = escape(name, 64);
        assert_eq!(shown, r"e\x1b[31m\nvil\x1b]0;");
        assert!(is_clean(&shown));
        assert_eq!(unescape(&shown), name);
    }

    #[test]
    fn plain_names_are_kept() {
        assert_eq!(escape(b"make", 64), "make");
        assert_eq!(escape(b"cc1plus", 64), "cc1plus");
        assert_eq!(escape(b"python3 -m x", 64), "python3 -m x");
        assert_eq!(escape(b"", 64), "");
    }

    #[test]
    fn backslashes_cannot_fake_an_escape() {
        // a name that spells out "\x1b" must not look like one that holds ESC
        assert_eq!(escape(br"\x1b", 64), r"\\x1b");
        assert_ne!(escape(br"\x1b", 64), escape(b"\x1b", 64));
    }

    #[test]
    fn utf8_invalid_bytes_del_and_c1() {
        assert_eq!(escape("données".as_bytes(), 64), r"donn\u{e9}es");
        assert_eq!(escape(b"a\xffb\xc3", 64), r"a\xffb\xc3");
        assert_eq!(escape(b"\x7f", 64), r"\x7f");
        // U+009B is CSI on terminals that read C1 controls
        assert_eq!(escape("\u{9b}31m".as_bytes(), 64), r"\u{9b}31m");
        // bidirectional override (Trojan Source)
        assert_eq!(escape("a\u{202e}b".as_bytes(), 64), r"a\u{202e}b");
    }

    #[test]
    fn long_names_are_cut_between_escapes() {
        let name = [0x1bu8; 20];
        let shown = escape(&name, 16);
        // three whole escapes (12 chars) and the ellipsis
        assert_eq!(shown, r"\x1b\x1b\x1b...");
        assert!(shown.len() <= 16);
        assert_eq!(escape(b"abcdefghij", 8), "abcde...");
        assert_eq!(escape(b"abcdefgh", 8), "abcdefgh");
        assert_eq!(escape(b"abcdefghi", 2), "ab");
        assert_eq!(escape("ééé".as_bytes(), 10), r"\u{e9}...");
    }

    #[test]
    fn lines_lose_every_control_character() {
        assert_eq!(
            line("fairshare: 2 CPUs\n\x1b[2Jgotcha\r\t!", 80),
            "fairshare: 2 CPUs ?[2Jgotcha  !"
        );
        assert_eq!(line("naïve\u{202e}\u{9b}", 80), "na?ve??");
        assert_eq!(line("abcdefghij", 8), "abcde...");
        assert_eq!(line("abcdefghij", 2), "ab");
        assert_eq!(line("short", 80), "short");
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn no_control_byte_survives_escape(
                raw in proptest::collection::vec(any::<u8>(), 0..80),
                max in 0usize..120,
            ) {
                let out = escape(&raw, max);
                prop_assert!(is_clean(&out), "{out:?}");
                prop_assert!(out.len() <= max);
            }

            #[test]
            fn escape_is_exact_and_reversible(raw in proptest::collection::vec(any::<u8>(), 0..40)) {
                let out = escape(&raw, usize::MAX);
                prop_assert!(is_clean(&out));
                prop_assert_eq!(unescape(&out), raw);
            }

            #[test]
            fn a_cut_escape_is_a_prefix_and_ends_in_the_ellipsis(
                raw in proptest::collection::vec(any::<u8>(), 0..40),
                max in 3usize..60,
            ) {
                let full = escape(&raw, usize::MAX);
                let out = escape(&raw, max);
                if full.len() <= max {
                    prop_assert_eq!(out, full);
                } else {
                    let kept = out.strip_suffix(ELLIPSIS).unwrap();
                    prop_assert!(full.starts_with(kept));
                    // whole escapes only: what was kept reads back as a prefix of the input
                    prop_assert!(raw.starts_with(&unescape(kept)));
                }
            }

            #[test]
            fn no_control_byte_survives_line(s in "\\PC{0,10}[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}\\u{200b}-\\u{206f}]{0,10}.{0,40}", max in 0usize..120) {
                let out = line(&s, max);
                prop_assert!(is_clean(&out), "{out:?}");
                prop_assert!(out.len() <= max);
                prop_assert_eq!(line(&out, max), out.clone(), "idempotent");
            }

            #[test]
            fn line_of_any_bytes(raw in proptest::collection::vec(any::<u8>(), 0..80)) {
                let s = String::from_utf8_lossy(&raw);
                prop_assert!(is_clean(&line(&s, 200)));
            }
        }
    }
}
