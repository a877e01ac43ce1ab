//! Headless Chromium, for the tests of the HTML report (`heaptape report`): skipped
//! where no browser is installed (CI installs Debian's `chromium`).

use std::process::Command;

/// Chromium, for the HTML report's test: Debian's `chromium` (which .ci/run installs).
pub fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// Runs headless Chromium on `page` with `extra` arguments; returns (stdout, stderr).
pub fn headless(browser: &str, page: &std::path::Path, extra: &[&str]) -> (String, String) {
    let profile = page.with_extension("chromium-profile");
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
