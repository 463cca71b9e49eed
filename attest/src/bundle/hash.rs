//! Hashing the model's resources: streamed through a bounded buffer, files and shards spread
//! over the rayon pool, with an optional progress bar.

use std::fs::File;
use std::io::IsTerminal as _;
use std::io::{ErrorKind, Read, Seek, SeekFrom};

use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;

use super::digest::HashAlgorithm;
use super::error::BundleError;
use super::manifest::{Resource, Serialization, sort_resources};
use super::walk::ModelFile;

/// Read buffer per task. Large enough for BLAKE3 to split a chunk across threads, small
/// enough that one task per core stays in the low MiBs.
const CHUNK: usize = 4 * 1024 * 1024;

/// Below this total size a progress bar is noise.
pub(crate) const PROGRESS_MIN_BYTES: u64 = 256 * 1024 * 1024;

/// One unit of work: a whole file or one shard of it.
struct Task<'a> {
    file: &'a ModelFile,
    range: Option<(u64, u64)>,
}

/// Hashes every file (or shard) and returns the resources sorted as the manifest lists them.
pub(crate) fn hash_model(
    files: &[ModelFile],
    method: Serialization,
    hash: HashAlgorithm,
    progress: bool,
) -> Result<Vec<Resource>, BundleError> {
    let mut tasks = Vec::new();
    for f in files {
        match method {
            Serialization::Files => tasks.push(Task {
                file: f,
                range: None,
            }),
            Serialization::Shards { shard_size } => {
                if shard_size == 0 {
                    return Err(BundleError::InvalidOption {
                        detail: "shard size must be positive".to_owned(),
                    });
                }
                // model_signing's `_endpoints`: step, 2·step, …, and always the file size
                // last; an empty file yields no shard at all.
                let mut start = 0;
                while start < f.size {
                    let end = start.saturating_add(shard_size).min(f.size);
                    tasks.push(Task {
                        file: f,
                        range: Some((start, end)),
                    });
                    start = end;
                }
            }
        }
    }

    let total: u64 = files.iter().map(|f| f.size).sum();
    let bar = progress_bar(progress, total);
    let mut resources = tasks
        .par_iter()
        .map(|t| hash_task(t, hash, &bar))
        .collect::<Result<Vec<_>, _>>()?;
    bar.finish_and_clear();
    sort_resources(&mut resources);
    Ok(resources)
}

fn progress_bar(wanted: bool, total: u64) -> ProgressBar {
    if !wanted || total < PROGRESS_MIN_BYTES || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "hashing {bar:40} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar
}

fn hash_task(
    task: &Task<'_>,
    alg: HashAlgorithm,
    bar: &ProgressBar,
) -> Result<Resource, BundleError> {
    let path = &task.file.abs;
    let io_err = |e| BundleError::io(path, e);
    let mut file = File::open(path).map_err(io_err)?;
    let mut hasher = alg.hasher();
    let mut buf = vec![0u8; CHUNK];
    match task.range {
        None => loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(e)),
            };
            hasher.update(&buf[..n]);
            bar.inc(n as u64);
        },
        Some((start, end)) => {
            file.seek(SeekFrom::Start(start)).map_err(io_err)?;
            let mut left = end - start;
            while left > 0 {
                let want = usize::try_from(left).unwrap_or(usize::MAX).min(CHUNK);
                let n = match file.read(&mut buf[..want]) {
                    // The file shrank between listing and hashing: its shards no longer
                    // describe it, so refuse rather than hash a partial shard.
                    Ok(0) => {
                        return Err(io_err(std::io::Error::new(
                            ErrorKind::UnexpectedEof,
                            "file shrank while being hashed",
                        )));
                    }
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io_err(e)),
                };
                hasher.update(&buf[..n]);
                bar.inc(n as u64);
                left -= n as u64;
            }
        }
    }
    Ok(Resource {
        path: task.file.rel.clone(),
        range: task.range,
        digest: hasher.finalize(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::walk::{IgnoreSet, list_files};

    #[test]
    fn shards_follow_model_signing_endpoints() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), vec![1u8; 9]).unwrap();
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        std::fs::write(dir.path().join("exact"), vec![2u8; 4]).unwrap();
        let files = list_files(dir.path(), &IgnoreSet::default()).unwrap();
        let rs = hash_model(
            &files,
            Serialization::Shards { shard_size: 2 * 2 },
            HashAlgorithm::Sha256,
            false,
        )
        .unwrap();
        let names: Vec<String> = rs.iter().map(Resource::name).collect();
        // Python: list(_endpoints(4, 9)) == [4, 8, 9]; empty files have no shard.
        assert_eq!(names, ["exact:0:4", "f:0:4", "f:4:8", "f:8:9"]);
    }
}
