//! The command line around the record and the report: `heaptape run` (records, keeps
//! the trace, prints the report on stderr with the program's stdout untouched, exits
//! with the program's status or 1 on a `--fail-on` finding; its report is
//! `analyze`'s), and the completion scripts and man page generated from the options.

mod common;

use common::*;

const LEAKS: &str = r#"
#include <stdio.h>
#include <stdlib.h>
int main(int argc, char **argv) {
    int lose = atoi(argv[1]);
    for (int i = 0; i < lose; i++) { void *volatile p = malloc(100); p = 0; }
    puts("hello");
    return atoi(argv[2]);
}
"#;

#[test]
fn run_reports_like_analyze_and_exits_like_the_program() {
    let dir = TestDir::new("run");
    let prog = dir.compile_c("leaks", LEAKS);
    let trace = dir.join("t.trace");
    let native = run_native(&dir, &prog, &["3", "7"]);
    assert_eq!(native.shell_code(), 7);
    let r = run(heaptape()
        .arg("run")
        .arg("-o")
        .arg(&trace)
        .arg("--")
        .arg(&prog)
        .args(["3", "7"])
        .current_dir(dir.path()));
    assert_eq!(r.shell_code(), 7, "{}", r.stderr);
    assert_eq!(r.stdout, native.stdout, "the program's output changed");
    assert!(
        r.stderr.contains("definitely lost: 300 bytes in 3 blocks"),
        "{}",
        r.stderr
    );
    // The trace is kept, and analyze reports what run printed.
    let analyzed = run_heaptape(["analyze".as_ref(), trace.as_os_str()]);
    assert!(analyzed.status.success(), "{}", analyzed.stderr);
    assert!(
        r.stderr.contains(analyzed.stdout_str().trim_end()),
        "run's report differs from analyze's:\n{}\n---\n{}",
        r.stderr,
        analyzed.stdout_str()
    );
    // --fail-on: 1 when it finds something (whatever the program's status), else the
    // program's status.
    for (lose, status, fail_on, expected) in [
        ("3", "0", "definite", 1),
        ("3", "7", "definite", 1),
        ("0", "0", "definite", 0),
        ("0", "5", "definite", 5),
    ] {
        let r = run(heaptape()
            .args(["run", "--fail-on", fail_on, "-o"])
            .arg(&trace)
            .arg("--")
            .arg(&prog)
            .args([lose, status])
            .current_dir(dir.path()));
        assert_eq!(
            r.shell_code(),
            expected,
            "lose {lose}, exit {status}: {}",
            r.stderr
        );
    }
    // A program that cannot be run: record's error and status.
    let r = run_heaptape(["run", "--", "/nonexistent/program"]);
    assert_eq!(r.shell_code(), 127, "{}", r.stderr);
    assert!(r.stderr.contains("/nonexistent/program"), "{}", r.stderr);
}

#[test]
fn completions_and_the_man_page_know_every_command() {
    let commands = [
        "record",
        "run",
        "analyze",
        "flamegraph",
        "export",
        "diff",
        "dump",
        "completions",
        "man",
    ];
    // bash: the script loads, and completing `heaptape e` offers export.
    let script = run_heaptape(["completions", "bash"]);
    assert!(script.status.success(), "{}", script.stderr);
    let path =
        std::env::temp_dir().join(format!("heaptape-completion-{}.bash", std::process::id()));
    std::fs::write(&path, &script.stdout).expect("write the script");
    let probe = run(std::process::Command::new("bash").arg("-c").arg(format!(
        "source {}; COMP_WORDS=(heaptape ''); COMP_CWORD=1; _heaptape heaptape '' heaptape; \
         echo \"${{COMPREPLY[@]}}\"; COMP_WORDS=(heaptape export --f); COMP_CWORD=2; \
         _heaptape heaptape --f export; echo \"${{COMPREPLY[@]}}\"",
        path.display()
    )));
    let _ = std::fs::remove_file(&path);
    assert!(probe.status.success(), "{}", probe.stderr);
    let out = probe.stdout_str();
    let mut lines = out.lines();
    let top: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    for c in commands {
        assert!(top.contains(&c), "{c} not offered: {top:?}");
    }
    assert!(lines.next().unwrap_or("").contains("--format"), "{out}");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let s = run_heaptape(["completions", shell]);
        assert!(
            s.status.success() && !s.stdout.is_empty(),
            "{shell}: {}",
            s.stderr
        );
    }
    let man = run_heaptape(["man"]);
    assert!(man.status.success(), "{}", man.stderr);
    let page = man.stdout_str();
    assert!(page.contains(".TH heaptape 1"), "{page}");
    for c in commands {
        assert!(
            page.contains(&format!("heaptape\\-{c}")),
            "{c} missing from the man page"
        );
    }
}

#[test]
fn colour_on_a_terminal_unless_no_color() {
    let dir = TestDir::new("colour");
    let prog = dir.compile_c("leaks", LEAKS);
    let trace = dir.join("t.trace");
    record_ok(&dir, &trace, &[], &prog, &["3", "0"]);
    let trace_s = trace.to_str().expect("utf-8");
    let analyze = |color: &str| run_heaptape(["analyze", "--color", color, trace_s]);
    let esc = |s: &[u8]| s.contains(&0x1b);
    let always = analyze("always");
    assert!(always.status.success(), "{}", always.stderr);
    let text = always.stdout_str();
    assert!(
        text.contains("\x1b[31m      definitely lost: 300 bytes in 3 blocks\x1b[0m"),
        "{text:?}"
    );
    // Plain text under the colours: the same report.
    let never = analyze("never");
    assert!(!esc(&never.stdout));
    let stripped = ["\x1b[0m", "\x1b[1m", "\x1b[2m", "\x1b[31m", "\x1b[33m"]
        .iter()
        .fold(text.clone(), |t, code| t.replace(code, ""));
    assert_eq!(stripped, never.stdout_str());
    // auto: not into a pipe; on a terminal (a pseudo-terminal from script(1)), unless
    // NO_COLOR is set.
    assert!(!esc(&analyze("auto").stdout));
    let on_tty = |no_color: Option<&str>| {
        let mut cmd = std::process::Command::new("script");
        cmd.args(["-qc", &format!("{HEAPTAPE} analyze {trace_s}"), "/dev/null"]);
        cmd.env_remove("NO_COLOR");
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        run(&mut cmd)
    };
    let tty = on_tty(None);
    if !tty.status.success() && tty.stdout.is_empty() {
        eprintln!(
            "SKIPPED the terminal part: script(1) could not make a terminal: {}",
            tty.stderr
        );
        return;
    }
    assert!(esc(&tty.stdout), "{}", tty.stdout_str());
    assert!(!esc(&on_tty(Some("1")).stdout));
}
