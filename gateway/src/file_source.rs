//! A binary cache in a local directory (`file://`), as a [`Source`]: what
//! `nixswarm import` loads seed nodes from.

use std::path::{Component, Path, PathBuf};

use futures::StreamExt as _;
use futures::future::BoxFuture;
use nixswarm_protocol::{NarInfo, StorePathHash};
use tokio_util::io::ReaderStream;

use crate::source::{ByteStream, Source, SourceError, SourceKind};
use crate::upstream::decoder;

/// A local binary cache directory.
#[derive(Debug, Clone)]
pub struct FileSource {
    dir: PathBuf,
    name: String,
}

impl FileSource {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            name: format!("file://{}", dir.display()),
        }
    }

    fn fail(&self, message: impl std::fmt::Display) -> SourceError {
        SourceError::Failed {
            source_name: self.name.clone(),
            message: message.to_string(),
        }
    }

    /// Every path hash with a narinfo in the directory.
    pub fn list(&self) -> std::io::Result<Vec<StorePathHash>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.dir)? {
            let name = e?.file_name();
            if let Some(h) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".narinfo"))
                .and_then(|h| h.parse().ok())
            {
                out.push(h);
            }
        }
        out.sort();
        Ok(out)
    }

    /// `rel` inside the directory, refusing anything that could leave it.
    fn inside(&self, rel: &str) -> Option<PathBuf> {
        let p = Path::new(rel);
        p.components()
            .all(|c| matches!(c, Component::Normal(_)))
            .then(|| self.dir.join(p))
    }
}

impl Source for FileSource {
    fn kind(&self) -> SourceKind {
        SourceKind::Upstream
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn narinfo<'a>(&'a self, hash: &'a StorePathHash) -> BoxFuture<'a, Result<Option<NarInfo>, SourceError>> {
        Box::pin(async move {
            let path = self.dir.join(format!("{hash}.narinfo"));
            let text = match tokio::fs::read_to_string(&path).await {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(self.fail(format!("{}: {e}", path.display()))),
            };
            NarInfo::parse(&text)
                .map(Some)
                .map_err(|e| self.fail(format!("{}: {e}", path.display())))
        })
    }

    fn nar<'a>(&'a self, info: &'a NarInfo) -> BoxFuture<'a, Result<Option<ByteStream>, SourceError>> {
        Box::pin(async move {
            let path = self
                .inside(&info.url)
                .ok_or_else(|| self.fail(format!("URL {:?} leaves the cache", info.url)))?;
            let file = match tokio::fs::File::open(&path).await {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(self.fail(format!("{}: {e}", path.display()))),
            };
            let reader = decoder(&info.compression, file)
                .ok_or_else(|| self.fail(format!("unsupported compression {:?}", info.compression)))?;
            Ok(Some(ReaderStream::with_capacity(reader, 64 * 1024).boxed()))
        })
    }
}
