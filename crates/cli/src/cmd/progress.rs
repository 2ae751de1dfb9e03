//! The one progress bar of `analyze`, `stats` and `dump`: on stderr, only
//! for files over 256 MiB, only when stderr is a terminal, never with `-q`.

use std::io::IsTerminal;

pub struct Progress(Option<indicatif::ProgressBar>);

impl Progress {
    pub fn new(total_bytes: u64, quiet: bool) -> Progress {
        if quiet || total_bytes < 256 << 20 || !std::io::stderr().is_terminal() {
            return Progress(None);
        }
        let bar = indicatif::ProgressBar::new(total_bytes);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        ) {
            bar.set_style(style);
        }
        Progress(Some(bar))
    }

    pub fn set(&self, pos: u64) {
        if let Some(b) = &self.0 {
            b.set_position(pos);
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}
