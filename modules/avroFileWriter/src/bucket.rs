//! Where a record goes: `<root>/<year>/<month>/<day>/<hour>/<minute rounded down to 5>.avro`,
//! in UTC, without zero padding (docs/architecture.md §3), and the clock that decides it.

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};
use std::path::{Path, PathBuf};

/// Width of a bucket, minutes.
pub const BUCKET_MINUTES: u32 = 5;

/// One five-minute bucket of the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bucket {
    /// Start of the bucket (UTC, a multiple of five minutes, zero seconds).
    start: DateTime<Utc>,
}

impl Bucket {
    /// The bucket holding instant `t`.
    pub fn of(t: DateTime<Utc>) -> Bucket {
        let minute = t.minute() / BUCKET_MINUTES * BUCKET_MINUTES;
        let start = Utc
            .with_ymd_and_hms(t.year(), t.month(), t.day(), t.hour(), minute, 0)
            .single()
            .unwrap_or(t); // UTC has no gaps or folds: always single
        Bucket { start }
    }

    /// When the bucket starts.
    pub fn start(&self) -> DateTime<Utc> {
        self.start
    }

    /// When the next bucket starts.
    pub fn end(&self) -> DateTime<Utc> {
        self.start + Duration::minutes(i64::from(BUCKET_MINUTES))
    }

    /// The file's path relative to the archive root, e.g. `2026/11/21/5/15.avro`; also the
    /// blob name it is uploaded under.
    pub fn relative_path(&self) -> PathBuf {
        let s = self.start;
        PathBuf::from(format!(
            "{}/{}/{}/{}/{}.avro",
            s.year(),
            s.month(),
            s.day(),
            s.hour(),
            s.minute()
        ))
    }

    /// The file's path under `root`.
    pub fn path(&self, root: &Path) -> PathBuf {
        root.join(self.relative_path())
    }

    /// The bucket a path relative to the root names (`Y/M/D/H/m.avro`), if it is one.
    pub fn from_relative_path(rel: &Path) -> Option<Bucket> {
        let text = rel.to_str()?;
        let text = text.strip_suffix(".avro")?;
        let mut parts = text.split('/');
        let mut next = || -> Option<u32> {
            let p = parts.next()?;
            // No zero padding: "05" is not ours.
            if p.is_empty() || (p.len() > 1 && p.starts_with('0')) {
                return None;
            }
            p.parse().ok()
        };
        let (y, mo, d, h, mi) = (next()?, next()?, next()?, next()?, next()?);
        if parts.next().is_some() || mi % BUCKET_MINUTES != 0 {
            return None;
        }
        let start = Utc
            .with_ymd_and_hms(i32::try_from(y).ok()?, mo, d, h, mi, 0)
            .single()?;
        Some(Bucket { start })
    }
}

/// The writer's clock: the system's UTC time, shifted by a fixed offset.
///
/// The offset exists for tests that must see a bucket end within seconds
/// (`AVRO_CLOCK_OFFSET_SECS`); it is zero in production.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    offset: Duration,
}

impl Clock {
    /// The system clock, shifted by `offset_secs`.
    pub fn with_offset_secs(offset_secs: i64) -> Clock {
        Clock {
            offset: Duration::seconds(offset_secs),
        }
    }

    /// Now, by this clock.
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.offset
    }

    /// The bucket current now.
    pub fn bucket(&self) -> Bucket {
        Bucket::of(self.now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    #[test]
    fn minutes_round_down_to_five_without_zero_padding() {
        let cases = [
            (at(2026, 11, 21, 5, 15, 0), "2026/11/21/5/15.avro"),
            (at(2026, 11, 21, 5, 19, 59), "2026/11/21/5/15.avro"),
            (at(2026, 11, 21, 5, 20, 0), "2026/11/21/5/20.avro"),
            (at(2026, 1, 2, 3, 4, 5), "2026/1/2/3/0.avro"),
            (at(2026, 1, 2, 0, 59, 59), "2026/1/2/0/55.avro"),
            (at(2025, 12, 31, 23, 58, 0), "2025/12/31/23/55.avro"),
        ];
        for (t, want) in cases {
            assert_eq!(Bucket::of(t).relative_path(), PathBuf::from(want), "{t}");
        }
    }

    #[test]
    fn buckets_are_utc_whatever_the_offset_of_the_input() {
        let t = DateTime::parse_from_rfc3339("2026-11-21T07:16:00+02:00").unwrap();
        assert_eq!(
            Bucket::of(t.with_timezone(&Utc)).relative_path(),
            PathBuf::from("2026/11/21/5/15.avro")
        );
    }

    #[test]
    fn bucket_bounds_and_paths_round_trip() {
        let b = Bucket::of(at(2026, 11, 21, 5, 17, 30));
        assert_eq!(b.start(), at(2026, 11, 21, 5, 15, 0));
        assert_eq!(b.end(), at(2026, 11, 21, 5, 20, 0));
        assert_eq!(Bucket::from_relative_path(&b.relative_path()), Some(b));
        assert_eq!(
            b.path(Path::new("/avrofiles")),
            PathBuf::from("/avrofiles/2026/11/21/5/15.avro")
        );
        for bad in [
            "2026/11/21/05/15.avro",
            "2026/11/21/5/16.avro",
            "2026/11/21/5/15.avro.tmp",
            "quarantine/2026-11-21.jsonl",
            "2026/11/21/5/15/0.avro",
        ] {
            assert_eq!(Bucket::from_relative_path(Path::new(bad)), None, "{bad}");
        }
    }

    #[test]
    fn the_clock_offset_moves_the_bucket() {
        let now = Clock::default().bucket();
        let later = Clock::with_offset_secs(3600).bucket();
        assert!(later.start() - now.start() >= Duration::minutes(55));
    }
}
