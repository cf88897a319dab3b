//! `PUT /import/<hash>`: a path handed to the running node (`nixswarm
//! import` given a running node's data directory loads through here, so
//! nothing else opens the store). The body is the narinfo's length in
//! bytes and a newline, the narinfo, then the NAR. The narinfo must verify
//! against the trusted keys (or Nix's content-address rule) and the NAR
//! against the narinfo before anything is kept; the node then announces
//! the path as it does any other it stores.
//!
//! Like pinning, it needs the [`crate::pin::WRITE_HEADER`] header, which a
//! web page cannot send cross-site.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt as _;
use nixswarm_node::{Committed, IngestWriter};
use nixswarm_protocol::{NarInfo, StorePathHash};

use crate::AppState;
use crate::error::GatewayError;

/// The longest narinfo taken.
pub const MAX_NARINFO: usize = 64 << 10;

/// The body's head: `<length>\n<narinfo>`.
pub fn frame(narinfo: &str) -> Bytes {
    Bytes::from(format!("{}\n{narinfo}", narinfo.len()))
}

/// Splits the head off `buf` once it is all there: the narinfo's text and
/// the NAR bytes that followed it (`None`: more is needed).
pub fn head(buf: &[u8]) -> Result<Option<(String, Bytes)>, String> {
    let Some(nl) = buf.iter().position(|b| *b == b'\n') else {
        return if buf.len() > 8 {
            Err("the body does not start with the narinfo's length".into())
        } else {
            Ok(None)
        };
    };
    let len: usize = std::str::from_utf8(&buf[..nl])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or("the body does not start with the narinfo's length")?;
    if len > MAX_NARINFO {
        return Err(format!("a narinfo of {len} bytes (at most {MAX_NARINFO})"));
    }
    let rest = &buf[nl + 1..];
    if rest.len() < len {
        return Ok(None);
    }
    let text = String::from_utf8(rest[..len].to_vec()).map_err(|_| "the narinfo is not UTF-8")?;
    Ok(Some((text, Bytes::copy_from_slice(&rest[len..]))))
}

fn answer(status: StatusCode, text: impl Into<String>) -> Response {
    (status, format!("{}\n", text.into())).into_response()
}

pub async fn import(
    State(state): State<Arc<AppState>>,
    Path(hash): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, GatewayError> {
    if !headers.contains_key(crate::pin::WRITE_HEADER) {
        return Err(GatewayError::Forbidden(
            "importing needs the x-nixswarm-request header (use `nixswarm import`)",
        ));
    }
    let hash: StorePathHash = hash
        .parse()
        .map_err(|_| GatewayError::BadRequest(format!("{hash:?} is not a store path hash")))?;
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    let (text, first) = loop {
        match head(&buf) {
            Ok(Some(h)) => break h,
            Ok(None) => {}
            Err(why) => return Ok(answer(StatusCode::BAD_REQUEST, why)),
        }
        match stream.next().await {
            Some(Ok(piece)) => buf.extend_from_slice(&piece),
            Some(Err(e)) => return Ok(answer(StatusCode::BAD_REQUEST, format!("reading the body: {e}"))),
            None => return Ok(answer(StatusCode::BAD_REQUEST, "the body ended within its narinfo")),
        }
    };
    let info = match NarInfo::parse(&text) {
        Ok(i) => i,
        Err(e) => {
            return Ok(answer(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("malformed narinfo: {e}"),
            ));
        }
    };
    if let Err(why) = state.resolver.acceptable(&hash, &info) {
        let why = match why {
            "wrong_path" => format!("the narinfo is for {}", info.store_path),
            _ => "not signed by a trusted key of this node (see --trusted-key)".to_owned(),
        };
        return Ok(answer(StatusCode::UNPROCESSABLE_ENTITY, why));
    }
    if state.store.contains(hash).await? {
        return Ok(answer(StatusCode::OK, "already present"));
    }
    let importing = state.metrics.imports.start();
    let path = info.store_path.to_string();
    let Some(writer) = IngestWriter::start(state.store.blocking().clone(), info, None) else {
        return Ok(answer(StatusCode::INSUFFICIENT_STORAGE, "cannot start writing"));
    };
    let mut next = Some(Ok(first));
    while let Some(piece) = next {
        let piece = match piece {
            Ok(p) => p,
            Err(e) => return Ok(answer(StatusCode::BAD_REQUEST, format!("reading the NAR: {e}"))),
        };
        if !piece.is_empty() && !writer.write(piece).await {
            break; // the commit says why
        }
        next = stream.next().await;
    }
    Ok(match writer.commit().await {
        Committed::Stored => {
            tracing::info!(%path, "imported");
            importing.stored();
            answer(StatusCode::CREATED, "imported")
        }
        Committed::Mismatch => answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            "the NAR does not match its narinfo (NarHash or NarSize)",
        ),
        Committed::Failed => answer(
            StatusCode::INSUFFICIENT_STORAGE,
            "not stored: no room within the store's amount, or a disk error (see the node's log)",
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_head_comes_off_whole_or_waits_for_more() {
        let mut body = frame("StorePath: x\n").to_vec();
        body.extend_from_slice(b"NAR");
        assert_eq!(head(&body[..3]), Ok(None));
        let (text, rest) = head(&body).unwrap().unwrap();
        assert_eq!(text, "StorePath: x\n");
        assert_eq!(&rest[..], b"NAR");
        assert!(head(b"garbage-without-newline").is_err());
        assert!(head(b"99999999\n").is_err());
    }

    proptest! {
        #[test]
        fn any_head_gives_text_more_needed_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = head(&bytes);
        }
    }
}
