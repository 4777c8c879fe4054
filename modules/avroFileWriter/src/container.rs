//! The Avro 1.x object container format, written by hand so that appending, reopening and
//! repairing are exact (datums themselves are encoded by `apache-avro`, see [`crate::record`]).
//!
//! A file is a header — the magic `Obj\x01`, a metadata map (`avro.schema`, `avro.codec` =
//! `null`) and a 16-byte sync marker — followed by blocks, each a record count, the byte size
//! of the records, the records, and the marker again. The writer appends whole blocks and
//! syncs them; after a crash the file is cut back to the end of its last complete block
//! ([`repair`]), so every file on disk is readable up to its last sync.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The four bytes every container file starts with.
pub const MAGIC: [u8; 4] = *b"Obj\x01";
/// Length of a sync marker.
pub const SYNC_LEN: usize = 16;
/// A file's sync marker.
pub type SyncMarker = [u8; SYNC_LEN];
/// Longest header accepted when reading (ours is about 1.5 KiB).
pub const MAX_HEADER: u64 = 1 << 20;

/// Appends an Avro `long` (zig-zag, variable length) to `out`.
pub fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut n = ((v << 1) ^ (v >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Appends Avro `bytes`/`string`: length, then the bytes.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// Why a long could not be read.
#[derive(Debug, PartialEq, Eq)]
enum LongError {
    /// The input ended inside it.
    Eof,
    /// More than ten bytes: not a long.
    TooLong,
}

fn read_long(r: &mut impl Read) -> io::Result<Result<i64, LongError>> {
    let mut n: u64 = 0;
    for i in 0..10 {
        let mut b = [0u8; 1];
        if r.read(&mut b)? == 0 {
            return Ok(Err(LongError::Eof));
        }
        n |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] & 0x80 == 0 {
            return Ok(Ok(((n >> 1) as i64) ^ -((n & 1) as i64)));
        }
    }
    Ok(Err(LongError::TooLong))
}

/// A new random sync marker.
pub fn new_marker() -> SyncMarker {
    *uuid::Uuid::new_v4().as_bytes()
}

/// The header of a file with this schema (JSON text), codec `null` and marker.
pub fn encode_header(schema_json: &str, marker: &SyncMarker) -> Vec<u8> {
    let mut h = Vec::with_capacity(schema_json.len() + 64);
    h.extend_from_slice(&MAGIC);
    put_long(&mut h, 2);
    put_bytes(&mut h, b"avro.codec");
    put_bytes(&mut h, b"null");
    put_bytes(&mut h, b"avro.schema");
    put_bytes(&mut h, schema_json.as_bytes());
    put_long(&mut h, 0);
    h.extend_from_slice(marker);
    h
}

/// Appends one block (`count` records whose encodings are `data`) to `out`.
pub fn encode_block(out: &mut Vec<u8>, count: u64, data: &[u8], marker: &SyncMarker) {
    put_long(out, count as i64);
    put_long(out, data.len() as i64);
    out.extend_from_slice(data);
    out.extend_from_slice(marker);
}

/// A parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `avro.schema`, as written.
    pub schema: String,
    /// `avro.codec`, if present (absent means `null`).
    pub codec: Option<String>,
    /// The sync marker.
    pub marker: SyncMarker,
    /// Length of the header in bytes (where the first block starts).
    pub len: u64,
}

/// What is wrong with a file's start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The file ends inside the header: it was being created when the writer died, so it
    /// holds nothing that was acknowledged.
    #[error("the file ends inside its Avro header (torn while being created)")]
    Torn,
    /// Not an Avro object container file at all.
    #[error("not an Avro object container file: {0}")]
    NotAvro(String),
}

fn read_header(r: &mut impl Read) -> io::Result<Result<Header, HeaderError>> {
    let mut counted = Counted { inner: r, n: 0 };
    let mut magic = [0u8; 4];
    let got = read_up_to(&mut counted, &mut magic)?;
    if got < 4 {
        return Ok(if magic[..got] == MAGIC[..got] {
            Err(HeaderError::Torn)
        } else {
            Err(HeaderError::NotAvro("wrong magic bytes".into()))
        });
    }
    if magic != MAGIC {
        return Ok(Err(HeaderError::NotAvro("wrong magic bytes".into())));
    }
    let mut schema = None;
    let mut codec = None;
    loop {
        let mut count = match read_long(&mut counted)? {
            Ok(c) => c,
            Err(LongError::Eof) => return Ok(Err(HeaderError::Torn)),
            Err(LongError::TooLong) => {
                return Ok(Err(HeaderError::NotAvro("bad metadata count".into())))
            }
        };
        if count == 0 {
            break;
        }
        if count < 0 {
            count = count.checked_neg().unwrap_or(0);
            // A negative count is followed by the block's byte size, which we do not need.
            match read_long(&mut counted)? {
                Ok(_) => {}
                Err(LongError::Eof) => return Ok(Err(HeaderError::Torn)),
                Err(LongError::TooLong) => {
                    return Ok(Err(HeaderError::NotAvro("bad metadata size".into())))
                }
            }
        }
        for _ in 0..count {
            let key = match read_bytes(&mut counted)? {
                Ok(k) => k,
                Err(e) => return Ok(Err(e)),
            };
            let value = match read_bytes(&mut counted)? {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            match key.as_slice() {
                b"avro.schema" => schema = Some(value),
                b"avro.codec" => codec = Some(value),
                _ => {}
            }
        }
    }
    let mut marker = [0u8; SYNC_LEN];
    if read_up_to(&mut counted, &mut marker)? < SYNC_LEN {
        return Ok(Err(HeaderError::Torn));
    }
    let Some(schema) = schema else {
        return Ok(Err(HeaderError::NotAvro(
            "no avro.schema in the header".into(),
        )));
    };
    let text = |b: Vec<u8>, what: &str| {
        String::from_utf8(b).map_err(|_| HeaderError::NotAvro(format!("{what} is not UTF-8")))
    };
    let schema = match text(schema, "avro.schema") {
        Ok(s) => s,
        Err(e) => return Ok(Err(e)),
    };
    let codec = match codec.map(|c| text(c, "avro.codec")).transpose() {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    Ok(Ok(Header {
        schema,
        codec,
        marker,
        len: counted.n,
    }))
}

fn read_bytes(r: &mut impl Read) -> io::Result<Result<Vec<u8>, HeaderError>> {
    let len = match read_long(r)? {
        Ok(l) if l >= 0 && (l as u64) <= MAX_HEADER => l as usize,
        Ok(_) | Err(LongError::TooLong) => {
            return Ok(Err(HeaderError::NotAvro("bad metadata length".into())))
        }
        Err(LongError::Eof) => return Ok(Err(HeaderError::Torn)),
    };
    let mut b = vec![0u8; len];
    if read_up_to(r, &mut b)? < len {
        return Ok(Err(HeaderError::Torn));
    }
    Ok(Ok(b))
}

fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

struct Counted<'a, R> {
    inner: &'a mut R,
    n: u64,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        Ok(k)
    }
}

/// What a walk over a file's blocks found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    /// The header.
    pub header: Header,
    /// Where the last complete block ends (the header's end when there is none).
    pub valid_len: u64,
    /// The file's length.
    pub file_len: u64,
    /// Records in complete blocks.
    pub records: u64,
    /// Complete blocks.
    pub blocks: u64,
}

impl Scan {
    /// Whether the file ends exactly after a complete block (or after the header).
    pub fn is_intact(&self) -> bool {
        self.valid_len == self.file_len
    }
}

/// Walks the blocks of a container file of length `file_len`, stopping at the first block
/// that is incomplete or not followed by the file's sync marker.
pub fn scan<R: Read + Seek>(r: R, file_len: u64) -> io::Result<Result<Scan, HeaderError>> {
    let mut r = BufReader::with_capacity(64 * 1024, r);
    r.seek(SeekFrom::Start(0))?;
    let header = match read_header(&mut (&mut r).take(MAX_HEADER))? {
        Ok(h) => h,
        Err(HeaderError::Torn) if file_len >= MAX_HEADER => {
            return Ok(Err(HeaderError::NotAvro("header longer than 1 MiB".into())))
        }
        Err(e) => return Ok(Err(e)),
    };
    r.seek(SeekFrom::Start(header.len))?;
    let mut pos = header.len;
    let (mut records, mut blocks) = (0u64, 0u64);
    loop {
        let mut counted = Counted {
            inner: &mut r,
            n: 0,
        };
        let count = match read_long(&mut counted)? {
            Ok(c) if c >= 0 => c as u64,
            _ => break,
        };
        let size = match read_long(&mut counted)? {
            Ok(s) if s >= 0 => s as u64,
            _ => break,
        };
        let data_at = pos + counted.n;
        let Some(end) = data_at
            .checked_add(size)
            .and_then(|e| e.checked_add(SYNC_LEN as u64))
        else {
            break;
        };
        if end > file_len {
            break;
        }
        r.seek_relative(size as i64)?;
        let mut marker = [0u8; SYNC_LEN];
        if read_up_to(&mut r, &mut marker)? < SYNC_LEN || marker != header.marker {
            break;
        }
        pos = end;
        records += count;
        blocks += 1;
    }
    Ok(Ok(Scan {
        header,
        valid_len: pos,
        file_len,
        records,
        blocks,
    }))
}

/// What [`verify`] read of a whole file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    /// Blocks read.
    pub blocks: u64,
    /// Records decoded.
    pub records: u64,
}

/// Reads every block of the container file at `path` and decodes every record in it with
/// `decode` (which must consume exactly one datum from the front of the slice), before the
/// file may leave the device: the header is whole with the `null` codec, each block's count
/// and size are sane, each block ends with the file's sync marker, its data holds exactly
/// `count` records, and the last block ends where the file does. Returns what was read, or
/// [`FileError::NotAvro`] naming the first block that fails.
pub fn verify(
    path: &Path,
    mut decode: impl FnMut(&mut &[u8]) -> Result<(), String>,
) -> Result<Verified, FileError> {
    let io = |e| FileError::io(path, e);
    let damaged = |reason: String| FileError::NotAvro {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut r = BufReader::with_capacity(256 * 1024, file);
    let header = read_header(&mut (&mut r).take(MAX_HEADER))
        .map_err(io)?
        .map_err(|e| damaged(e.to_string()))?;
    if header.codec.as_deref().is_some_and(|c| c != "null") {
        return Err(damaged(format!(
            "codec '{}' is not the writer's (null)",
            header.codec.unwrap_or_default()
        )));
    }
    let mut pos = header.len;
    let mut done = Verified {
        blocks: 0,
        records: 0,
    };
    let mut data = Vec::new();
    while pos < file_len {
        let block = done.blocks + 1;
        let mut counted = Counted {
            inner: &mut r,
            n: 0,
        };
        let count = read_long(&mut counted).map_err(io)?;
        let size = read_long(&mut counted).map_err(io)?;
        let (count, size) = match (count, size) {
            (Ok(c), Ok(s)) if c >= 0 && s >= 0 => (c as u64, s as u64),
            _ => {
                return Err(damaged(format!(
                    "block {block} at byte {pos}: bad record count or size"
                )))
            }
        };
        let data_at = pos + counted.n;
        let end = data_at
            .checked_add(size)
            .and_then(|e| e.checked_add(SYNC_LEN as u64))
            .unwrap_or(u64::MAX);
        if end > file_len {
            return Err(damaged(format!(
                "block {block} at byte {pos}: {size} bytes announced, the file ends first"
            )));
        }
        data.resize(size as usize, 0);
        r.read_exact(&mut data).map_err(io)?;
        let mut marker = [0u8; SYNC_LEN];
        r.read_exact(&mut marker).map_err(io)?;
        if marker != header.marker {
            return Err(damaged(format!(
                "block {block} at byte {pos}: not followed by the file's sync marker"
            )));
        }
        let mut rest = data.as_slice();
        for i in 0..count {
            decode(&mut rest).map_err(|e| {
                damaged(format!(
                    "block {block} at byte {pos}: record {} of {count} does not decode: {e}",
                    i + 1
                ))
            })?;
        }
        if !rest.is_empty() {
            return Err(damaged(format!(
                "block {block} at byte {pos}: {} bytes left after its {count} records",
                rest.len()
            )));
        }
        pos = end;
        done.blocks += 1;
        done.records += count;
    }
    Ok(done)
}

/// What [`repair`] did to a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Repaired {
    /// The file ended with a complete block (or right after its header): left as it was.
    Intact(Header),
    /// A torn last block was cut off.
    Truncated {
        /// The header.
        header: Header,
        /// Length before.
        from: u64,
        /// Length after (the end of the last complete block).
        to: u64,
    },
    /// The header itself is incomplete: the file holds nothing that was acknowledged.
    TornHeader,
}

/// Errors opening or repairing a container file, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// An I/O error.
    #[error("{path}: {source} (check the disk and the permissions of the archive folder)")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The file is not an Avro container file.
    #[error("{path}: {reason}")]
    NotAvro {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl FileError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: io::Error) -> FileError {
        FileError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Makes a file readable to its end: a torn last block is cut off (and the cut synced).
///
/// A file that ends with its marker is taken as intact without reading its blocks: a torn
/// block ends with the marker only if its data contained the file's 16 random bytes.
pub fn repair(path: &Path) -> Result<Repaired, FileError> {
    let io = |e| FileError::io(path, e);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    let mut head = vec![0u8; file_len.min(MAX_HEADER) as usize];
    let got = read_up_to(&mut &file, &mut head).map_err(io)?;
    head.truncate(got);
    let header = match read_header(&mut head.as_slice()).map_err(io)? {
        Ok(h) => h,
        Err(HeaderError::Torn) if file_len < MAX_HEADER => return Ok(Repaired::TornHeader),
        Err(e) => {
            return Err(FileError::NotAvro {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        }
    };
    if file_len == header.len {
        return Ok(Repaired::Intact(header));
    }
    if file_len >= header.len + SYNC_LEN as u64 {
        let mut tail = [0u8; SYNC_LEN];
        file.read_exact_at(&mut tail, file_len - SYNC_LEN as u64)
            .map_err(io)?;
        if tail == header.marker {
            return Ok(Repaired::Intact(header));
        }
    }
    let scan = match scan(&file, file_len).map_err(io)? {
        Ok(s) => s,
        Err(e) => {
            return Err(FileError::NotAvro {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        }
    };
    if scan.is_intact() {
        return Ok(Repaired::Intact(scan.header));
    }
    file.set_len(scan.valid_len).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(Repaired::Truncated {
        header: scan.header,
        from: file_len,
        to: scan.valid_len,
    })
}

/// Creates `dir` and its missing parents, syncing each parent whose entries changed, so the
/// new folders survive a crash. `root` must already exist.
pub fn create_dirs_synced(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs_synced(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Syncs a folder (its entries: files created, renamed or removed in it).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn longs_are_zigzag_varints() {
        let cases: [(i64, &[u8]); 7] = [
            (0, &[0]),
            (-1, &[1]),
            (1, &[2]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (1000, &[0xd0, 0x0f]),
            (
                i64::MIN,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ];
        for (v, want) in cases {
            let mut out = Vec::new();
            put_long(&mut out, v);
            assert_eq!(out, want, "{v}");
            assert_eq!(read_long(&mut out.as_slice()).unwrap(), Ok(v));
        }
        assert_eq!(
            read_long(&mut [0x80u8].as_slice()).unwrap(),
            Err(LongError::Eof)
        );
    }

    #[test]
    fn headers_parse_back_and_every_prefix_is_torn() {
        let marker = [7u8; 16];
        let h = encode_header("\"string\"", &marker);
        let parsed = read_header(&mut h.as_slice()).unwrap().unwrap();
        assert_eq!(parsed.schema, "\"string\"");
        assert_eq!(parsed.codec.as_deref(), Some("null"));
        assert_eq!(parsed.marker, marker);
        assert_eq!(parsed.len, h.len() as u64);
        for cut in 0..h.len() {
            assert_eq!(
                read_header(&mut &h[..cut]).unwrap(),
                Err(HeaderError::Torn),
                "cut at {cut}"
            );
        }
        let e = read_header(&mut b"PK\x03\x04 zip".as_slice())
            .unwrap()
            .unwrap_err();
        assert!(matches!(e, HeaderError::NotAvro(_)), "{e}");
    }

    #[test]
    fn scans_count_complete_blocks_only() {
        let marker = [9u8; 16];
        let mut f = encode_header("\"long\"", &marker);
        let header_len = f.len() as u64;
        encode_block(&mut f, 2, &[2, 4], &marker);
        let first_end = f.len() as u64;
        encode_block(&mut f, 1, &[6], &marker);
        let len = f.len() as u64;
        let s = scan(Cursor::new(&f), len).unwrap().unwrap();
        assert_eq!((s.records, s.blocks, s.valid_len), (3, 2, len));
        assert!(s.is_intact());
        let s = scan(Cursor::new(&f[..len as usize - 1]), len - 1)
            .unwrap()
            .unwrap();
        assert_eq!((s.records, s.blocks, s.valid_len), (2, 1, first_end));
        let s = scan(Cursor::new(&f[..first_end as usize - 3]), first_end - 3)
            .unwrap()
            .unwrap();
        assert_eq!((s.records, s.valid_len), (0, header_len));
    }

    /// Decodes one Avro `long` (the schema of the test files).
    fn one_long(data: &mut &[u8]) -> Result<(), String> {
        match read_long(data) {
            Ok(Ok(_)) => Ok(()),
            _ => Err("not a long".into()),
        }
    }

    fn write(dir: &Path, bytes: &[u8]) -> PathBuf {
        let p = dir.join("f.avro");
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn verify_reads_every_block_and_names_the_first_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let marker = [9u8; 16];
        let mut f = encode_header("\"long\"", &marker);
        encode_block(&mut f, 2, &[2, 4], &marker);
        let second = f.len();
        encode_block(&mut f, 1, &[6], &marker);
        let good = f.clone();
        let v = verify(&write(dir.path(), &good), one_long).unwrap();
        assert_eq!((v.blocks, v.records), (2, 3));

        // A block whose count says more records than its data holds (two writers' blocks
        // interleaved, a torn write in the middle) is found, wherever it is.
        let mut wrong_count = good.clone();
        wrong_count[second] = 4; // count 2 instead of 1
        let e = verify(&write(dir.path(), &wrong_count), one_long).unwrap_err();
        assert!(e.to_string().contains("block 2"), "{e}");

        // A middle block not followed by the marker: repair() looks only at the end.
        let mut bad_marker = good.clone();
        bad_marker[second - 1] ^= 0xff;
        assert!(matches!(
            repair(&write(dir.path(), &bad_marker)).unwrap(),
            Repaired::Intact(_)
        ));
        let e = verify(&write(dir.path(), &bad_marker), one_long).unwrap_err();
        assert!(e.to_string().contains("block 1"), "{e}");
        assert!(e.to_string().contains("sync marker"), "{e}");

        // Bytes after the last block, and a datum that does not decode.
        let mut trailing = good.clone();
        trailing.extend_from_slice(&[1, 2, 3]);
        assert!(verify(&write(dir.path(), &trailing), one_long).is_err());
        let mut undecodable = encode_header("\"long\"", &marker);
        encode_block(&mut undecodable, 1, &[0x80], &marker);
        let e = verify(&write(dir.path(), &undecodable), one_long).unwrap_err();
        assert!(e.to_string().contains("does not decode"), "{e}");
        let mut left_over = encode_header("\"long\"", &marker);
        encode_block(&mut left_over, 1, &[2, 4], &marker);
        let e = verify(&write(dir.path(), &left_over), one_long).unwrap_err();
        assert!(e.to_string().contains("left after"), "{e}");
    }
}
