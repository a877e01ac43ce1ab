//! Reading a suppression file: valgrind blocks (`{` ... `}`) and LeakSanitizer lines
//! (`leak:PATTERN`) in any order, `#` comment lines and blank lines between them.

use super::{lsan, valgrind, Suppression, SuppressionError};

/// The suppressions of `text` (named `origin` in errors and origins).
pub(super) fn parse(text: &str, origin: &str) -> Result<Vec<Suppression>, SuppressionError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    let mut out = Vec::new();
    while let Some((number, line)) = lines.next() {
        let error = |message: String| SuppressionError {
            origin: origin.to_owned(),
            line: number,
            message,
        };
        if line == "{" {
            if let Some(s) = valgrind::parse_block(number, &mut lines, origin)? {
                out.push(s);
            }
        } else if let Some((kind, pattern)) = line.split_once(':') {
            if let Some(s) =
                lsan::parse_line(kind.trim(), pattern.trim(), origin, number).map_err(error)?
            {
                out.push(s);
            }
        } else {
            return Err(error(format!(
                "`{line}` is not a suppression (expected `{{` to open a valgrind \
                 suppression, `leak:PATTERN` or a `#` comment)"
            )));
        }
    }
    Ok(out)
}
