//! `iotedge-local logs`: a module's log file (its stdout and stderr, which edgeAgent writes
//! to `logs/<module>.log` of the state folder), whole, its last lines, or followed.

use anyhow::{Context, Result};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

/// The last `n` lines of `text` (all of it if it has fewer).
pub fn last_lines(text: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    match body.rmatch_indices('\n').nth(n - 1) {
        Some((i, _)) => &text[i + 1..],
        None => text,
    }
}

/// Prints `module`'s log at `path`: the last `tail` lines (all without), then, if `follow`,
/// what is appended, until the process is stopped. A log that was cut (the module's file
/// started again) is followed from its new start.
pub async fn print(path: &Path, module: &str, tail: Option<usize>, follow: bool) -> Result<()> {
    let mut file = std::fs::File::open(path).with_context(|| {
        format!(
            "no log for module '{module}' at {} (is it a module of the manifest, started by `iotedge-local run` with this --state?)",
            path.display()
        )
    })?;
    let mut text = Vec::new();
    file.read_to_end(&mut text)?;
    let text = String::from_utf8_lossy(&text);
    let shown = match tail {
        Some(n) => last_lines(&text, n),
        None => &text,
    };
    let mut out = std::io::stdout().lock();
    out.write_all(shown.as_bytes())?;
    out.flush()?;
    drop(out);
    if !follow {
        return Ok(());
    }
    let mut at = file.stream_position()?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let len = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if len < at {
            // The file was truncated or replaced: follow the new one from its start.
            file = std::fs::File::open(path)?;
            at = 0;
        }
        file.seek(SeekFrom::Start(at))?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            at += n as u64;
            let mut out = std::io::stdout().lock();
            out.write_all(&buf[..n])?;
            out.flush()?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_counts_from_the_end() {
        let t = "a\nb\nc\n";
        assert_eq!(last_lines(t, 2), "b\nc\n");
        assert_eq!(last_lines(t, 3), t);
        assert_eq!(last_lines(t, 10), t);
        assert_eq!(last_lines(t, 0), "");
        assert_eq!(
            last_lines("a\nb", 1),
            "b",
            "a last line without its newline"
        );
        assert_eq!(last_lines("", 3), "");
    }
}
