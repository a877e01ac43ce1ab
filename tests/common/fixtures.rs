//! Compiling test programs: the fixtures of `tests/fixtures/` and sources written inline
//! in a test, into the test's directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{run, TestDir};

/// The source of fixture `name` (e.g. `threads.c`, `leaks/leak_tree.c`).
pub fn fixture_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Runs `cc[0] cc[1..] -o out src extra`, which must succeed.
pub fn build(cc: &[&str], src: &Path, out: &Path, extra: &[&str]) {
    let (compiler, flags) = cc.split_first().expect("a compiler");
    let res = run(Command::new(compiler)
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg(src)
        .args(extra));
    assert!(
        res.status.success(),
        "{compiler} {} failed:\n{}",
        src.display(),
        res.stderr
    );
}

impl TestDir {
    /// Compiles fixture `src` (gcc for `.c`, g++ for `.cc`) at -O0 -g into `out`.
    pub fn compile(&self, src: &str, out: &str, extra: &[&str]) -> PathBuf {
        let compiler = if src.ends_with(".cc") { "g++" } else { "gcc" };
        let out_path = self.join(out);
        build(
            &[compiler, "-O0", "-g", "-w"],
            &fixture_src(src),
            &out_path,
            extra,
        );
        out_path
    }

    /// Writes `source` to `file` and compiles it with `cc` (the compiler and its flags,
    /// see [`build`]) into `out`, both relative to this directory.
    pub fn compile_source(&self, file: &str, source: &str, out: &str, cc: &[&str]) -> PathBuf {
        let src = self.join(file);
        if let Some(parent) = src.parent() {
            std::fs::create_dir_all(parent).expect("create source directory");
        }
        std::fs::write(&src, source).expect("write fixture source");
        let exe = self.join(out);
        build(cc, &src, &exe, &[]);
        exe
    }

    /// Compiles C `source` (-g -O0 -pthread) into an executable called `name`.
    pub fn compile_c(&self, name: &str, source: &str) -> PathBuf {
        self.compile_source(
            &format!("{name}.c"),
            source,
            name,
            &["gcc", "-g", "-O0", "-pthread"],
        )
    }
}
