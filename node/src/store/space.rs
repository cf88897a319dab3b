//! The space of the filesystem holding the store, and the reserve the
//! store always leaves free on it.

/// A filesystem's space, as `statvfs(3)` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    /// Its size.
    pub size: u64,
    /// Free, for root.
    pub free: u64,
    /// Free for everyone else (the service runs as a plain user).
    pub available: u64,
}

impl FsSpace {
    /// The space of the filesystem holding `dir` (or its nearest existing
    /// parent).
    pub fn of(dir: &std::path::Path) -> std::io::Result<Self> {
        use std::os::unix::ffi::OsStrExt as _;
        let existing = dir
            .ancestors()
            .find(|a| a.exists())
            .unwrap_or(std::path::Path::new("/"));
        let c = std::ffi::CString::new(existing.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        // SAFETY: an all-zero statvfs is a valid value to be overwritten.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let unit = st.f_frsize as u64;
        Ok(Self {
            size: st.f_blocks as u64 * unit,
            free: st.f_bfree as u64 * unit,
            available: st.f_bavail as u64 * unit,
        })
    }

    /// What the store always leaves free on this filesystem: 1% of it,
    /// at least 256 MiB and at most 8 GiB, and never more than a tenth of
    /// a small filesystem. The disk never fills to 0 bytes, whatever else
    /// shares it.
    pub fn reserve(&self) -> u64 {
        (self.size / 100).clamp(256 << 20, 8 << 30).min(self.size / 10)
    }

    /// What a plain user may fill, the reserve kept: the size less the
    /// blocks only root may use (ext4 keeps 5%) and less [`Self::reserve`].
    pub fn usable(&self) -> u64 {
        let root_only = self.free.saturating_sub(self.available);
        self.size.saturating_sub(root_only).saturating_sub(self.reserve())
    }
}
