//! An upstream binary cache over HTTP(S): cache.nixos.org by default.

use std::sync::Arc;
use std::time::Duration;

use async_compression::tokio::bufread::{BzDecoder, XzDecoder, ZstdDecoder};
use futures::future::BoxFuture;
use futures::{StreamExt as _, TryStreamExt as _};
use nixswarm_protocol::{NarInfo, StorePathHash};
use reqwest::{StatusCode, Url};
use tokio::io::{AsyncRead, BufReader};
use tokio_util::io::{ReaderStream, StreamReader};

use crate::source::{ByteStream, Source, SourceError, SourceKind};

/// Largest narinfo accepted (real ones are well under 4 KiB).
const MAX_NARINFO: usize = 64 * 1024;
/// Read size for decompressed NAR data.
const READ_SIZE: usize = 64 * 1024;
/// Most memory the xz decoder may use. `URL` and `Compression` are not
/// signed, so a hostile upstream chooses the dictionary; Nix writes xz with
/// 8 MiB (level 6), and level 9 needs ~65 MiB.
pub const XZ_MEMLIMIT: u64 = 128 << 20;
/// Largest zstd window accepted (2^27 = 128 MiB, zstd's default limit;
/// `--long=31` streams are refused).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// One upstream cache.
#[derive(Debug, Clone)]
pub struct Upstream {
    base: Url,
    client: reqwest::Client,
    timeout: Duration,
    /// Signs each request (an S3 bucket with credentials).
    signer: Option<crate::s3::Signer>,
}

/// Builds the shared HTTP client for the `upstreams`: redirects only
/// where [`crate::outbound`] allows them.
pub fn http_client(
    connect_timeout: Duration,
    read_timeout: Duration,
    upstreams: &[Url],
) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .read_timeout(read_timeout)
        .redirect(crate::outbound::redirects())
        .dns_resolver(Arc::new(crate::outbound::PublicOnly::new(upstreams)))
        .user_agent(concat!("nixswarm/", env!("CARGO_PKG_VERSION")))
        .build()
}

impl Upstream {
    /// An upstream at `base` (`http://` or `https://`). `timeout` bounds a
    /// whole narinfo request.
    pub fn new(base: &Url, client: reqwest::Client, timeout: Duration) -> Result<Self, String> {
        if !matches!(base.scheme(), "http" | "https") {
            return Err(format!(
                "upstream {base}: only http:// and https:// upstreams are supported"
            ));
        }
        let mut base = base.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        Ok(Self {
            base,
            client,
            timeout,
            signer: None,
        })
    }

    /// The same upstream, each request signed by `signer`.
    pub fn with_signer(mut self, signer: crate::s3::Signer) -> Self {
        self.signer = Some(signer);
        self
    }

    /// A transport error with its causes ("error sending request: ...:
    /// Connection refused"): reqwest's own message leaves them out.
    fn fail_io(&self, e: &reqwest::Error) -> SourceError {
        self.fail(nixswarm_node::p2p::error_chain(e))
    }

    fn fail(&self, message: impl std::fmt::Display) -> SourceError {
        SourceError::Failed {
            source_name: self.base.to_string(),
            message: message.to_string(),
        }
    }

    /// GETs `rel` (relative to the cache root). `None` on 404/403/410.
    pub async fn get(&self, rel: &str, timeout: Option<Duration>) -> Result<Option<reqwest::Response>, SourceError> {
        let url = self
            .base
            .join(rel)
            .map_err(|e| self.fail(format!("bad URL {rel:?}: {e}")))?;
        if url.origin() != self.base.origin() {
            return Err(self.fail(format!("{rel:?} points outside the upstream")));
        }
        let mut req = self.client.get(url);
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        let req = req.build().map_err(|e| self.fail_io(&e))?;
        let resp = crate::s3::send(&self.client, req, self.signer.as_ref())
            .await
            .map_err(|e| self.fail_io(&e))?;
        match resp.status() {
            s if s.is_success() => Ok(Some(resp)),
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN | StatusCode::GONE => Ok(None),
            s => Err(self.fail(format!("HTTP {s} for {rel}"))),
        }
    }
}

/// A blocking decoder of `compression` for the store's writer thread
/// (zstd and xz, with the same limits as [`decoder`]). These are also the
/// compressions a NAR's file may be passed through to Nix in: Nix decodes
/// them from a `Content-Encoding` header (through libarchive).
pub fn write_decoder(compression: &str) -> Option<nixswarm_node::Decode> {
    Some(match compression {
        "zstd" => Box::new(|sink| {
            let mut raw = zstd::stream::raw::Decoder::new()?;
            raw.set_parameter(zstd::stream::raw::DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))?;
            Ok(Box::new(zstd::stream::write::Decoder::with_decoder(sink, raw)))
        }),
        "xz" => Box::new(|sink| {
            let stream = xz2::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, xz2::stream::CONCATENATED)
                .map_err(std::io::Error::other)?;
            Ok(Box::new(xz2::write::XzDecoder::new_stream(sink, stream)))
        }),
        _ => return None,
    })
}

pub(crate) fn decoder(
    compression: &str,
    raw: impl AsyncRead + Send + Unpin + 'static,
) -> Option<Box<dyn AsyncRead + Send + Unpin>> {
    let buf = BufReader::with_capacity(READ_SIZE, raw);
    Some(match compression {
        "none" => Box::new(buf),
        "xz" => {
            let mut d = XzDecoder::with_mem_limit(buf, XZ_MEMLIMIT);
            d.multiple_members(true);
            Box::new(d)
        }
        "zstd" => {
            let params = [async_compression::zstd::DParameter::window_log_max(ZSTD_WINDOW_LOG_MAX)];
            let mut d = ZstdDecoder::with_params(buf, &params);
            d.multiple_members(true);
            Box::new(d)
        }
        "bzip2" => {
            let mut d = BzDecoder::new(buf);
            d.multiple_members(true);
            Box::new(d)
        }
        _ => return None,
    })
}

impl Source for Upstream {
    fn kind(&self) -> SourceKind {
        SourceKind::Upstream
    }

    fn name(&self) -> &str {
        self.base.as_str()
    }

    fn narinfo<'a>(&'a self, hash: &'a StorePathHash) -> BoxFuture<'a, Result<Option<NarInfo>, SourceError>> {
        Box::pin(async move {
            let Some(resp) = self.get(&format!("{hash}.narinfo"), Some(self.timeout)).await? else {
                return Ok(None);
            };
            if resp.content_length().is_some_and(|n| n > MAX_NARINFO as u64) {
                return Err(self.fail(format!("narinfo for {hash} is larger than {MAX_NARINFO} bytes")));
            }
            let mut body = Vec::new();
            let mut stream = resp.bytes_stream();
            while let Some(piece) = stream.next().await {
                body.extend_from_slice(&piece.map_err(|e| self.fail_io(&e))?);
                if body.len() > MAX_NARINFO {
                    return Err(self.fail(format!("narinfo for {hash} is larger than {MAX_NARINFO} bytes")));
                }
            }
            let text = String::from_utf8(body).map_err(|_| self.fail(format!("narinfo for {hash} is not UTF-8")))?;
            NarInfo::parse(&text)
                .map(Some)
                .map_err(|e| self.fail(format!("narinfo for {hash}: {e}")))
        })
    }

    fn nar<'a>(&'a self, info: &'a NarInfo) -> BoxFuture<'a, Result<Option<ByteStream>, SourceError>> {
        Box::pin(async move {
            if decoder(&info.compression, tokio::io::empty()).is_none() {
                return Err(self.fail(format!("unsupported compression {:?}", info.compression)));
            }
            let Some(resp) = self.get(&info.url, None).await? else {
                return Ok(None);
            };
            let raw = StreamReader::new(resp.bytes_stream().map_err(std::io::Error::other));
            let Some(reader) = decoder(&info.compression, raw) else {
                return Err(self.fail(format!("unsupported compression {:?}", info.compression)));
            };
            Ok(Some(ReaderStream::with_capacity(reader, READ_SIZE).boxed()))
        })
    }

    fn file<'a>(&'a self, info: &'a NarInfo) -> BoxFuture<'a, Result<Option<ByteStream>, SourceError>> {
        Box::pin(async move {
            let Some(resp) = self.get(&info.url, None).await? else {
                return Ok(None);
            };
            Ok(Some(resp.bytes_stream().map_err(std::io::Error::other).boxed()))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::AsyncReadExt as _;

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    async fn xz(data: &[u8]) -> Vec<u8> {
        let mut enc = async_compression::tokio::bufread::XzEncoder::new(data);
        let mut out = Vec::new();
        enc.read_to_end(&mut out).await.unwrap();
        out
    }

    async fn decode(compression: &str, data: Vec<u8>) -> std::io::Result<Vec<u8>> {
        let mut d = decoder(compression, std::io::Cursor::new(data)).unwrap();
        let mut out = Vec::new();
        d.read_to_end(&mut out).await.map(|_| out)
    }

    /// An xz stream whose block header asks for a 1.5 GiB dictionary (the
    /// data itself is tiny) is refused instead of allocated.
    #[tokio::test]
    async fn an_xz_stream_demanding_a_huge_dictionary_is_refused() {
        let plain = b"a NAR, or so it says".to_vec();
        let good = xz(&plain).await;
        assert_eq!(decode("xz", good.clone()).await.unwrap(), plain);
        // Stream header (12 bytes), then the block header: size, flags,
        // LZMA2 filter id 0x21, props size 1, props (dictionary), padding, CRC32.
        let mut bomb = good;
        assert_eq!(
            &bomb[12..16],
            &[0x02, 0x00, 0x21, 0x01],
            "the block header as liblzma writes it"
        );
        bomb[16] = 37; // (2 | 1) << (37 / 2 + 11) = 1.5 GiB
        let crc = crc32(&bomb[12..20]);
        bomb[20..24].copy_from_slice(&crc.to_le_bytes());
        let err = decode("xz", bomb).await.unwrap_err();
        assert!(err.to_string().to_lowercase().contains("mem"), "{err}");
    }

    /// A zstd frame whose window exceeds 2^27 is refused.
    #[tokio::test]
    async fn a_zstd_frame_with_a_huge_window_is_refused() {
        use std::io::Write as _;
        let plain = vec![7u8; 1000];
        // Streamed, so the frame declares the window, not the content size.
        let mut e = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        e.set_parameter(zstd::zstd_safe::CParameter::WindowLog(30)).unwrap();
        e.write_all(&plain).unwrap();
        let frame = e.finish().unwrap();
        assert!(decode("zstd", frame).await.is_err());
        let ok = zstd::bulk::compress(&plain, 3).unwrap();
        assert_eq!(decode("zstd", ok).await.unwrap(), plain);
    }
}
