//! Colour for the text report on a terminal (`--color`): a writer that styles each
//! line of the report by the report's own wording, so that the renderers stay plain
//! text. Section headers and the leak summary's title in bold; losses in red (definite,
//! indirect) or yellow (possible) when they are not zero, their loss records in bold of
//! the same colour; bad frees in red when there are any; warnings in yellow; the
//! addresses of stack frames dimmed.

use std::io::{self, Write};

use anstyle::{AnsiColor, Style};

const BOLD: Style = Style::new().bold();
const RED: Style = AnsiColor::Red.on_default();
const YELLOW: Style = AnsiColor::Yellow.on_default();
const DIM: Style = Style::new().dimmed();

/// Styles the lines written through it into `out` (call [`Colour::finish`] at the end
/// for a last line without a newline).
pub struct Colour<'w> {
    out: &'w mut dyn Write,
    line: Vec<u8>,
}

impl<'w> Colour<'w> {
    /// A writer that styles what it passes on to `out`.
    pub fn new(out: &'w mut dyn Write) -> Colour<'w> {
        Colour {
            out,
            line: Vec::with_capacity(256),
        }
    }

    /// Writes a last, unterminated line, if any.
    pub fn finish(mut self) -> io::Result<()> {
        self.emit(false)
    }

    fn emit(&mut self, newline: bool) -> io::Result<()> {
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        write_styled(&mut *self.out, &line)?;
        if newline {
            self.out.write_all(b"\n")?;
        }
        Ok(())
    }
}

impl Write for Colour<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&rest[..i]);
            self.emit(true)?;
            rest = &rest[i + 1..];
        }
        self.line.extend_from_slice(rest);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The style of a whole line of the report, if it has one.
fn line_style(line: &str) -> Option<Style> {
    let t = line.trim_start();
    let nonzero = |label: &str| {
        t.strip_prefix(label)
            .is_some_and(|rest| !rest.trim_start().starts_with("0 bytes"))
    };
    if t.starts_with("heaptape trace of") || t.starts_with("== ") || t == "LEAK SUMMARY:" {
        Some(BOLD)
    } else if nonzero("definitely lost:") || nonzero("indirectly lost:") {
        Some(RED)
    } else if nonzero("possibly lost:") {
        Some(YELLOW)
    } else if t.contains(" are definitely lost in loss record")
        || t.contains(" are indirectly lost in loss record")
    {
        Some(RED.bold())
    } else if t.contains(" are possibly lost in loss record") {
        Some(YELLOW.bold())
    } else if t.starts_with("bad frees:") && t != "bad frees: 0 double, 0 invalid, 0 mismatched" {
        Some(RED)
    } else if t.starts_with("Invalid free() / ") || t.starts_with("Mismatched free() / ") {
        Some(RED.bold())
    } else if t.starts_with("warning") {
        Some(YELLOW)
    } else if t.ends_with(':') && t.starts_with(|c: char| c.is_ascii_lowercase()) {
        // Section titles: "top call sites at the heap peak:".
        Some(BOLD)
    } else {
        None
    }
}

fn write_styled(out: &mut dyn Write, line: &str) -> io::Result<()> {
    if let Some(style) = line_style(line) {
        return write!(out, "{style}{line}{style:#}");
    }
    // A stack frame: `at 0x4011d6: main (app.c:12)`: the address dimmed.
    let t = line.trim_start();
    if let Some(frame) = t.strip_prefix("at ").or_else(|| t.strip_prefix("by ")) {
        if let Some((address, rest)) = frame.split_once(": ") {
            if address.starts_with("0x") {
                let indent = &line[..line.len() - t.len()];
                let word = &t[..3];
                return write!(out, "{indent}{word}{DIM}{address}:{DIM:#} {rest}");
            }
        }
    }
    out.write_all(line.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn styled(text: &str) -> String {
        let mut out = Vec::new();
        let mut c = Colour::new(&mut out);
        c.write_all(text.as_bytes()).unwrap();
        c.finish().unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn losses_are_coloured_only_when_there_are_any() {
        let red = format!("{}", RED.render());
        assert!(styled("      definitely lost: 300 bytes in 3 blocks\n").starts_with(&red));
        assert_eq!(
            styled("      definitely lost: 0 bytes in 0 blocks\n"),
            "      definitely lost: 0 bytes in 0 blocks\n"
        );
        assert_eq!(
            styled("   total heap usage: 3 allocs"),
            "   total heap usage: 3 allocs"
        );
        let heading = "   Invalid free() / delete / delete[] / realloc() (double free by free, 1 time, stack 3)\n";
        assert!(styled(heading).starts_with(&format!("{}", RED.bold().render())));
        let heading = "   Mismatched free() / delete / delete [] (free of a block allocated by operator new, 1 time, stack 9)\n";
        assert!(styled(heading).starts_with(&format!("{}", RED.bold().render())));
        let frame = styled("        at 0x4011d6: main (app.c:12)\n");
        assert!(frame.contains("main (app.c:12)") && frame.contains(&format!("{}", DIM.render())));
        // Text split across writes is styled by whole lines.
        let mut out = Vec::new();
        let mut c = Colour::new(&mut out);
        c.write_all(b"      possibly lo").unwrap();
        c.write_all(b"st: 8 bytes in 1 block\nrest").unwrap();
        c.finish().unwrap();
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with(&format!("{}", YELLOW.render())), "{s:?}");
        assert!(s.ends_with("\nrest"));
    }
}
