//! How the reports name what the trace says in enums: process origins, why an image
//! ended, signals, and how a process ended in words.

use heaptape_format::{ExitStatus, ProcessOrigin};

use crate::replay::ImageEnd;

/// `launched`, `attached`, `fork`, `vfork` or `clone`.
pub(crate) fn origin_name(origin: ProcessOrigin) -> &'static str {
    match origin {
        ProcessOrigin::Launched => "launched",
        ProcessOrigin::Attached => "attached",
        ProcessOrigin::Fork => "fork",
        ProcessOrigin::Vfork => "vfork",
        ProcessOrigin::Clone => "clone",
    }
}

/// `exit`, `exec`, `trace_end` or `superseded`.
pub(crate) fn end_name(end: Option<ImageEnd>) -> &'static str {
    match end {
        Some(ImageEnd::Exit) => "exit",
        Some(ImageEnd::Exec) => "exec",
        Some(ImageEnd::TraceEnd) | None => "trace_end",
        Some(ImageEnd::Superseded) => "superseded",
    }
}

/// The usual name of a Linux signal number (`SIGSEGV`), by nix's table.
pub(crate) fn signal_name(sig: i32) -> Option<&'static str> {
    nix::sys::signal::Signal::try_from(sig)
        .ok()
        .map(|s| s.as_str())
}

/// How a process ended, in words.
pub(crate) fn describe_exit(exit: Option<ExitStatus>, end: Option<ImageEnd>) -> String {
    match exit {
        Some(ExitStatus::Code(c)) => format!("exited with code {c}"),
        Some(ExitStatus::Signal(s)) => match signal_name(s) {
            Some(name) => format!("killed by signal {s} ({name})"),
            None => format!("killed by signal {s}"),
        },
        Some(ExitStatus::Detached) => "still running when the recorder detached".into(),
        None => match end {
            Some(ImageEnd::Superseded) => "end not recorded".into(),
            _ => "still running when the trace ended".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(11), Some("SIGSEGV"));
        assert_eq!(signal_name(31), Some("SIGSYS"));
        assert_eq!(signal_name(0), None);
        assert_eq!(signal_name(-4), None);
        assert_eq!(signal_name(64), None);
        assert_eq!(
            describe_exit(Some(ExitStatus::Signal(6)), Some(ImageEnd::Exit)),
            "killed by signal 6 (SIGABRT)"
        );
    }
}
