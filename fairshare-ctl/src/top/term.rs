//! The live view: ratatui on crossterm, in the alternate screen.
//!
//! The terminal is put back (raw mode off, main screen, cursor shown) on
//! every way out: `q`, Esc or Ctrl-C (raw mode delivers it as a key),
//! SIGTERM, SIGHUP or SIGINT from outside (a flag checked between events),
//! an error (the guard's `Drop`), and a panic (ratatui's panic hook).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ratatui::Terminal;
use ratatui::backend::Backend;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row as TableRow, Table};

use super::model::{Sample, SortKey};
use super::view::{self, COLUMNS, Frame};
use super::{Error, Options, Sampler};

/// How often keys and signals are looked at while waiting for the next sample.
const TICK: Duration = Duration::from_millis(200);

/// Puts the terminal back when dropped.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
        let _ = ratatui::crossterm::execute!(std::io::stdout(), ratatui::crossterm::cursor::Show);
    }
}

/// What a key asks for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    Quit,
    Sort(SortKey),
    NextSort,
    Reverse,
    /// Multiply the interval by this.
    Interval(f64),
    Refresh,
    Nothing,
}

pub fn action(k: KeyEvent) -> Action {
    if k.kind != KeyEventKind::Press {
        return Action::Nothing;
    }
    match k.code {
        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Action::Quit,
        KeyCode::Char('q') | KeyCode::Esc => Action::Quit,
        KeyCode::Char('s') => Action::NextSort,
        KeyCode::Char('c') => Action::Sort(SortKey::Cpu),
        KeyCode::Char('a') => Action::Sort(SortKey::Share),
        KeyCode::Char('m') => Action::Sort(SortKey::Mem),
        KeyCode::Char('t') => Action::Sort(SortKey::Throttle),
        KeyCode::Char('o') => Action::Sort(SortKey::Oom),
        KeyCode::Char('n') => Action::Sort(SortKey::Name),
        KeyCode::Char('r') => Action::Reverse,
        KeyCode::Char('+') => Action::Interval(2.0),
        KeyCode::Char('-') => Action::Interval(0.5),
        KeyCode::Char(' ') | KeyCode::Enter => Action::Refresh,
        _ => Action::Nothing,
    }
}

/// The keys, for the last line.
pub const KEYS: &str =
    "q quit  s sort: c cpu a alloc m mem t thr o oom n name  r reverse  +/- interval";

fn row_style(r: &super::model::Row) -> Style {
    if r.oom_new {
        Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
    } else if r.at_cpu_limit() || r.near_mem_limit() {
        Style::default().fg(Color::Yellow)
    } else {
        Style::default()
    }
}

/// Draws `f` on the whole of `area`.
pub fn draw(out: &mut ratatui::Frame, f: &Frame) {
    let header = view::header(f);
    let [top, table, keys] = Layout::vertical([
        Constraint::Length(header.len() as u16 + 1),
        Constraint::Min(2),
        Constraint::Length(1),
    ])
    .areas(out.area());
    let lines: Vec<Line> = header
        .iter()
        .enumerate()
        .map(|(i, l)| {
            if f.error.is_some() && i + 1 == header.len() {
                Line::styled(l.clone(), Style::default().fg(Color::Red))
            } else {
                Line::raw(l.clone())
            }
        })
        .collect();
    out.render_widget(Paragraph::new(lines), top);
    let pad = |s: String, c: &view::Col| {
        let w = usize::from(c.width);
        if c.right { format!("{s:>w$}") } else { s }
    };
    let titles = TableRow::new(
        COLUMNS
            .iter()
            .map(|c| Cell::from(pad(c.title.to_string(), c))),
    )
    .style(Style::default().add_modifier(Modifier::REVERSED));
    let rows: Vec<TableRow> = f
        .rows
        .iter()
        .map(|r| {
            TableRow::new(
                view::cells(r)
                    .into_iter()
                    .zip(COLUMNS.iter())
                    .map(|(s, c)| Cell::from(pad(s, c))),
            )
            .style(row_style(r))
        })
        .collect();
    let empty = rows.is_empty();
    let widths = COLUMNS.iter().map(|c| Constraint::Length(c.width));
    out.render_widget(
        Table::new(rows, widths).header(titles).column_spacing(1),
        table,
    );
    if empty {
        let [_, below] = Layout::vertical([Constraint::Length(1), Constraint::Min(1)]).areas(table);
        let msg = if f.everyone {
            "(no users hold an allocation)"
        } else {
            "(fairshare tracks no session of yours)"
        };
        out.render_widget(Paragraph::new(msg), below);
    }
    out.render_widget(
        Paragraph::new(view::fit(KEYS, usize::from(keys.width)))
            .style(Style::default().add_modifier(Modifier::DIM)),
        keys,
    );
}

/// The state of the live view between frames.
pub struct Live {
    pub opts: Options,
    pub prev: Option<Sample>,
    pub cur: Option<Sample>,
    pub error: Option<String>,
    pub hostname: String,
    pub everyone: bool,
}

impl Live {
    pub fn frame(&self) -> Frame {
        let mut f = super::frame(
            self.prev.as_ref(),
            self.cur.as_ref(),
            &self.opts,
            self.everyone,
            &self.hostname,
        );
        f.error = self.error.clone();
        f
    }

    /// Applies a key; false to quit.
    pub fn apply(&mut self, a: Action) -> bool {
        match a {
            Action::Quit => return false,
            Action::Sort(k) => self.opts.sort = k,
            Action::NextSort => self.opts.sort = self.opts.sort.next(),
            Action::Reverse => self.opts.reverse = !self.opts.reverse,
            Action::Interval(x) => {
                self.opts.interval =
                    Some((self.opts.interval() * x).clamp(super::MIN_INTERVAL, 60.0))
            }
            Action::Refresh | Action::Nothing => {}
        }
        true
    }

    /// Takes a sample; a failure is shown above the last good rows.
    pub fn refresh(&mut self, sampler: &Sampler, hint: fn(&Error) -> String) {
        match sampler.sample() {
            Ok(s) => {
                self.prev = self.cur.take();
                self.cur = Some(s);
                self.error = None;
            }
            Err(e) => self.error = Some(hint(&e)),
        }
    }
}

/// Runs the live view until the user quits or a signal comes.
pub fn run(sampler: &Sampler, opts: Options, hint: fn(&Error) -> String) -> Result<(), Error> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(Error::Terminal(std::io::Error::other(
            "standard input and output must be a terminal",
        )));
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
        signal_hook::consts::SIGINT,
    ] {
        signal_hook::flag::register(sig, Arc::clone(&stop)).map_err(Error::Terminal)?;
    }
    let mut live = Live {
        opts,
        prev: None,
        cur: None,
        error: None,
        hostname: super::hostname(),
        everyone: sampler.everyone,
    };
    // The first sample before the screen switches, so a daemon that is not
    // there is said on the normal screen.
    live.cur = Some(sampler.sample()?);
    let mut terminal = ratatui::try_init().map_err(Error::Terminal)?;
    let _restore = Restore;
    event_loop(&mut terminal, sampler, &mut live, &stop, hint)
}

fn event_loop<B: Backend>(
    terminal: &mut Terminal<B>,
    sampler: &Sampler,
    live: &mut Live,
    stop: &AtomicBool,
    hint: fn(&Error) -> String,
) -> Result<(), Error> {
    let mut next = Instant::now() + Duration::from_secs_f64(live.opts.interval());
    let mut dirty = true;
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            live.refresh(sampler, hint);
            next = Instant::now() + Duration::from_secs_f64(live.opts.interval());
            dirty = true;
        }
        if dirty {
            let f = live.frame();
            terminal
                .draw(|out| draw(out, &f))
                .map_err(Error::Terminal)?;
            dirty = false;
        }
        let wait = next.saturating_duration_since(Instant::now()).min(TICK);
        if event::poll(wait).map_err(Error::Terminal)? {
            match event::read().map_err(Error::Terminal)? {
                Event::Key(k) => {
                    let a = action(k);
                    if !live.apply(a) {
                        break;
                    }
                    if a == Action::Refresh {
                        next = Instant::now();
                    }
                    dirty = a != Action::Nothing;
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;

    fn key(c: KeyCode, m: KeyModifiers) -> KeyEvent {
        KeyEvent::new(c, m)
    }

    #[test]
    fn keys() {
        assert_eq!(
            action(key(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Action::Quit
        );
        assert_eq!(
            action(key(KeyCode::Char('c'), KeyModifiers::NONE)),
            Action::Sort(SortKey::Cpu)
        );
        assert_eq!(action(key(KeyCode::Esc, KeyModifiers::NONE)), Action::Quit);
        let mut release = key(KeyCode::Char('q'), KeyModifiers::NONE);
        release.kind = KeyEventKind::Release;
        assert_eq!(action(release), Action::Nothing);
        let mut live = Live {
            opts: Options {
                interval: None,
                once: false,
                sort: SortKey::Cpu,
                reverse: false,
                json: false,
            },
            prev: None,
            cur: None,
            error: None,
            hostname: "h".into(),
            everyone: true,
        };
        assert!(live.apply(Action::NextSort));
        assert_eq!(live.opts.sort, SortKey::Share);
        assert!(live.apply(Action::Interval(0.5)));
        assert_eq!(live.opts.interval(), 1.0);
        for _ in 0..20 {
            live.apply(Action::Interval(0.5));
        }
        assert_eq!(live.opts.interval(), super::super::MIN_INTERVAL);
        assert!(!live.apply(Action::Quit));
        assert!(KEYS.len() <= view::WIDTH, "{}", KEYS.len());
    }

    #[test]
    fn renders_in_an_80_by_24_terminal() {
        let mut t = Terminal::new(TestBackend::new(80, 24)).unwrap();
        let mut idle = view::tests_support::row("bob");
        idle.cpu_of_alloc = Some(0.1);
        idle.mem_used = Some(1 << 20);
        idle.oom_new = false;
        let f = view::tests_support::frame(vec![view::tests_support::row("alice"), idle]);
        t.draw(|out| draw(out, &f)).unwrap();
        let buf = t.backend().buffer().clone();
        let lines: Vec<String> = (0..24)
            .map(|y| {
                (0..80)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
                    .trim_end()
                    .to_string()
            })
            .collect();
        let text = lines.join("\n");
        assert_eq!(
            lines[0],
            "fairshare top on login1: 2 users; every 2s, by cpu"
        );
        assert_eq!(lines[5], view::table_header(), "{text}");
        assert_eq!(
            lines[6],
            view::table_row(&view::tests_support::row("alice")),
            "{text}"
        );
        assert!(lines[7].starts_with("bob "), "{text}");
        assert!(lines[23].starts_with("q quit"), "{text}");
        // at a limit and a new OOM kill: red; the idle row plain
        assert_eq!(buf[(0, 6)].fg, Color::Red);
        assert_eq!(buf[(0, 7)].fg, Color::Reset);
    }
}
