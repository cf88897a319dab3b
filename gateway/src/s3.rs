//! A binary cache in S3 or an S3-compatible store, named as Nix names it:
//! `s3://BUCKET[/PREFIX]?region=R&endpoint=HOST[:PORT]&scheme=http|https&profile=P`
//! (an `endpoint` may also carry its scheme). Requests are signed with AWS
//! Signature Version 4 when credentials are found (the standard sources:
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`,
//! else the shared credentials file and its profile), and go unsigned
//! (public buckets) otherwise. Reading goes through [`crate::Upstream`];
//! this module names the objects, signs, and lists the narinfos.

use std::fmt::Write as _;
use std::time::SystemTime;

use reqwest::Url;
use reqwest::header::{HeaderName, HeaderValue};
use sha2::{Digest as _, Sha256};

use nixswarm_protocol::StorePathHash;

/// Where a cache lives in S3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    /// `scheme://host[:port]/` of the service.
    pub endpoint: Url,
    pub bucket: String,
    /// Without leading or trailing `/` (may be empty).
    pub prefix: String,
    pub region: String,
    pub profile: Option<String>,
    /// `BUCKET.host` rather than `host/BUCKET` (AWS's own endpoint).
    pub virtual_host: bool,
}

impl S3Location {
    /// Parses an `s3://` URL.
    pub fn parse(url: &Url) -> Result<Self, String> {
        if url.scheme() != "s3" {
            return Err(format!("{url} is not an s3:// URL"));
        }
        let bucket = url
            .host_str()
            .filter(|b| !b.is_empty())
            .ok_or("an s3:// URL names its bucket: s3://BUCKET")?;
        let prefix = url.path().trim_matches('/').to_owned();
        let (mut region, mut endpoint, mut scheme, mut profile) = (None, None, None, None);
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "region" => region = Some(v.into_owned()),
                "endpoint" => endpoint = Some(v.into_owned()),
                "scheme" => scheme = Some(v.into_owned()),
                "profile" => profile = Some(v.into_owned()),
                // Nix's own knobs that do not concern reading.
                "compression"
                | "parallel-compression"
                | "write-nar-listing"
                | "ls-compression"
                | "log-compression"
                | "multipart-upload"
                | "buffer-size"
                | "narinfo-compression" => {}
                other => return Err(format!("unknown s3:// parameter {other:?}")),
            }
        }
        let region = region.unwrap_or_else(|| "us-east-1".to_owned());
        let scheme = scheme.unwrap_or_else(|| "https".to_owned());
        if scheme != "http" && scheme != "https" {
            return Err(format!("scheme={scheme}: use http or https"));
        }
        let (endpoint, virtual_host) = match endpoint {
            Some(e) if e.contains("://") => (e, false),
            Some(e) => (format!("{scheme}://{e}"), false),
            None => (format!("https://s3.{region}.amazonaws.com"), true),
        };
        let mut endpoint: Url = endpoint.parse().map_err(|e| format!("endpoint {endpoint:?}: {e}"))?;
        endpoint.set_path("/");
        endpoint.set_query(None);
        Ok(Self {
            endpoint,
            bucket: bucket.to_owned(),
            prefix,
            region,
            profile,
            virtual_host,
        })
    }

    /// Signs for this bucket's region with the credentials found for its
    /// profile ([`Credentials::find`]); `None`: requests go unsigned.
    pub fn signer(&self) -> Option<Signer> {
        Credentials::find(self.profile.as_deref()).map(|creds| Signer {
            creds,
            region: self.region.clone(),
        })
    }

    /// The cache's root, ending in `/`: narinfos and NARs are relative to it.
    pub fn root(&self) -> Url {
        let mut u = self.bucket_url();
        let path = if self.prefix.is_empty() {
            u.path().to_owned()
        } else {
            format!("{}{}/", u.path(), self.prefix)
        };
        u.set_path(&path);
        u
    }

    fn bucket_url(&self) -> Url {
        let mut u = self.endpoint.clone();
        if self.virtual_host {
            let host = format!("{}.{}", self.bucket, u.host_str().unwrap_or_default());
            let _ = u.set_host(Some(&host));
        } else {
            u.set_path(&format!("/{}/", self.bucket));
        }
        u
    }

    /// A ListObjectsV2 page's URL.
    pub fn list_url(&self, token: Option<&str>) -> Url {
        let mut u = self.bucket_url();
        {
            let mut q = u.query_pairs_mut();
            q.append_pair("list-type", "2");
            if !self.prefix.is_empty() {
                q.append_pair("prefix", &format!("{}/", self.prefix));
            }
            if let Some(t) = token {
                q.append_pair("continuation-token", t);
            }
        }
        u
    }

    /// The store path hashes of the narinfos in one ListObjectsV2 answer,
    /// and the token of the next page if there is one.
    pub fn parse_list(&self, xml: &str) -> (Vec<StorePathHash>, Option<String>) {
        let strip = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let hashes = tags(xml, "Key")
            .into_iter()
            .filter_map(|k| k.strip_prefix(strip.as_str()).map(str::to_owned))
            .filter_map(|k| k.strip_suffix(".narinfo").and_then(|h| h.parse().ok()))
            .collect();
        let truncated = tags(xml, "IsTruncated").contains(&"true");
        let next = tags(xml, "NextContinuationToken")
            .first()
            .copied()
            .filter(|_| truncated);
        (hashes, next.map(|t| t.replace("&amp;", "&")))
    }
}

/// The text of each `<tag>...</tag>` in `xml`.
fn tags<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    xml.split(open.as_str())
        .skip(1)
        .filter_map(|part| part.split_once(close.as_str()).map(|(v, _)| v))
        .collect()
}

/// AWS credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// From the environment, else from the shared credentials file
    /// (`AWS_SHARED_CREDENTIALS_FILE`, or `~/.aws/credentials`) under
    /// `profile` (or `AWS_PROFILE`, or `default`). `None`: unsigned.
    pub fn find(profile: Option<&str>) -> Option<Self> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if profile.is_none()
            && let (Some(access_key), Some(secret_key)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"))
        {
            return Some(Self {
                access_key,
                secret_key,
                session_token: env("AWS_SESSION_TOKEN"),
            });
        }
        let file = env("AWS_SHARED_CREDENTIALS_FILE")
            .map(std::path::PathBuf::from)
            .or_else(|| env("HOME").map(|h| std::path::Path::new(&h).join(".aws/credentials")))?;
        let text = std::fs::read_to_string(file).ok()?;
        let profile = profile
            .map(str::to_owned)
            .or_else(|| env("AWS_PROFILE"))
            .unwrap_or_else(|| "default".into());
        Self::from_ini(&text, &profile)
    }

    fn from_ini(text: &str, profile: &str) -> Option<Self> {
        let (mut access_key, mut secret_key, mut session_token) = (None, None, None);
        let mut inside = false;
        for line in text.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                inside = name.trim() == profile;
                continue;
            }
            if !inside {
                continue;
            }
            if let Some((k, v)) = line.split_once('=') {
                let v = Some(v.trim().to_owned());
                match k.trim() {
                    "aws_access_key_id" => access_key = v,
                    "aws_secret_access_key" => secret_key = v,
                    "aws_session_token" => session_token = v,
                    _ => {}
                }
            }
        }
        Some(Self {
            access_key: access_key?,
            secret_key: secret_key?,
            session_token,
        })
    }
}

/// Signs requests to one bucket's region with some credentials.
#[derive(Debug, Clone)]
pub struct Signer {
    pub creds: Credentials,
    pub region: String,
}

impl Signer {
    pub fn sign(&self, req: &mut reqwest::Request) {
        sign(req, &self.creds, &self.region, SystemTime::now());
    }
}

/// Sends `req` through `client`, signed first when there is a `signer`.
pub async fn send(
    client: &reqwest::Client,
    mut req: reqwest::Request,
    signer: Option<&Signer>,
) -> reqwest::Result<reqwest::Response> {
    if let Some(s) = signer {
        s.sign(&mut req);
    }
    client.execute(req).await
}

/// Signs a bodiless request (AWS Signature Version 4, service `s3`, the
/// payload unsigned): adds `x-amz-date`, `x-amz-content-sha256`, the
/// session token if any, and `Authorization`. Signs `host`, `range` and
/// every `x-amz-*` header.
pub fn sign(req: &mut reqwest::Request, creds: &Credentials, region: &str, now: SystemTime) {
    let (date, time) = utc(now);
    let amz_date = format!("{date}T{time}Z");
    let headers = req.headers_mut();
    let mut put = |k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            headers.insert(HeaderName::from_static(k), v);
        }
    };
    put("x-amz-date", &amz_date);
    put("x-amz-content-sha256", "UNSIGNED-PAYLOAD");
    if let Some(t) = &creds.session_token {
        put("x-amz-security-token", t);
    }
    let auth = authorization(
        req.method().as_str(),
        req.url(),
        req.headers(),
        creds,
        region,
        &date,
        &amz_date,
        "UNSIGNED-PAYLOAD",
    );
    if let Ok(v) = HeaderValue::from_str(&auth) {
        req.headers_mut().insert(reqwest::header::AUTHORIZATION, v);
    }
}

/// The `Authorization` header's value.
#[allow(clippy::too_many_arguments)]
fn authorization(
    method: &str,
    url: &Url,
    headers: &reqwest::header::HeaderMap,
    creds: &Credentials,
    region: &str,
    date: &str,
    amz_date: &str,
    payload: &str,
) -> String {
    let host = match url.port() {
        Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_owned(),
    };
    let mut signed: Vec<(String, String)> = vec![("host".into(), host)];
    for (k, v) in headers {
        let k = k.as_str();
        if k.starts_with("x-amz-") || k == "range" {
            signed.push((k.to_owned(), v.to_str().unwrap_or_default().trim().to_owned()));
        }
    }
    signed.sort();
    let mut query: Vec<(String, String)> = url.query_pairs().map(|(k, v)| (encode(&k), encode(&v))).collect();
    query.sort();
    let query: Vec<String> = query.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    let names: Vec<&str> = signed.iter().map(|(k, _)| k.as_str()).collect();
    let mut canonical = format!("{method}\n{}\n{}\n", url.path(), query.join("&"));
    for (k, v) in &signed {
        let _ = writeln!(canonical, "{k}:{v}");
    }
    let _ = write!(canonical, "\n{}\n{payload}", names.join(";"));
    let scope = format!("{date}/{region}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(format!("AWS4{}", creds.secret_key).as_bytes(), date.as_bytes());
    for part in [region, "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={}, Signature={}",
        creds.access_key,
        names.join(";"),
        hex(&hmac(&key, to_sign.as_bytes()))
    )
}

/// URI-encodes `s` as SigV4 wants: everything but `A-Za-z0-9-_.~`.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().fold(String::new(), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// HMAC-SHA256 (RFC 2104).
fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let (mut inner, mut outer) = (Sha256::new(), Sha256::new());
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(data);
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// `now` in UTC as `YYYYMMDD` and `HHMMSS`.
fn utc(now: SystemTime) -> (String, String) {
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil-from-days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn signs_as_aws_documents_it() {
        // AWS's example "GET Object" (Signature Version 4, S3).
        let creds = Credentials {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        };
        let url: Url = "https://examplebucket.s3.amazonaws.com/test.txt".parse().unwrap();
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("range", HeaderValue::from_static("bytes=0-9"));
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        headers.insert("x-amz-content-sha256", HeaderValue::from_static(empty));
        headers.insert("x-amz-date", HeaderValue::from_static("20130524T000000Z"));
        let auth = authorization(
            "GET",
            &url,
            &headers,
            &creds,
            "us-east-1",
            "20130524",
            "20130524T000000Z",
            empty,
        );
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_369_353_600); // 2013-05-24
        assert_eq!(utc(t), ("20130524".into(), "000000".into()));
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400 + 3661); // 2000-02-29 01:01:01
        assert_eq!(utc(t), ("20000229".into(), "010101".into()));
    }

    #[test]
    fn nix_style_urls_name_the_endpoint_bucket_and_prefix() {
        let l = S3Location::parse(
            &"s3://cache/a/b?region=eu-west-1&endpoint=127.0.0.1:9000&scheme=http"
                .parse()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(l.root().as_str(), "http://127.0.0.1:9000/cache/a/b/");
        assert_eq!(
            l.list_url(Some("x y")).as_str(),
            "http://127.0.0.1:9000/cache/?list-type=2&prefix=a%2Fb%2F&continuation-token=x+y"
        );
        let aws = S3Location::parse(&"s3://cache".parse().unwrap()).unwrap();
        assert_eq!(aws.root().as_str(), "https://cache.s3.us-east-1.amazonaws.com/");
        assert!(S3Location::parse(&"s3://cache?bogus=1".parse().unwrap()).is_err());
        let xml = "<ListBucketResult><IsTruncated>true</IsTruncated>\
                   <Contents><Key>a/b/0fdai8ar5z5dz9zb7xdghly9sc6xqf8a.narinfo</Key></Contents>\
                   <Contents><Key>a/b/nar/x.nar.xz</Key></Contents>\
                   <NextContinuationToken>t&amp;1</NextContinuationToken></ListBucketResult>";
        let (hashes, next) = l.parse_list(xml);
        assert_eq!(hashes.len(), 1);
        assert_eq!(next.as_deref(), Some("t&1"));
    }

    #[test]
    fn credentials_come_from_the_profile_asked_for() {
        let ini = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n[ci]\naws_access_key_id=C\naws_secret_access_key=D\naws_session_token=E\n";
        assert_eq!(Credentials::from_ini(ini, "default").unwrap().access_key, "A");
        let ci = Credentials::from_ini(ini, "ci").unwrap();
        assert_eq!((ci.secret_key.as_str(), ci.session_token.as_deref()), ("D", Some("E")));
        assert!(Credentials::from_ini(ini, "nope").is_none());
    }
}
