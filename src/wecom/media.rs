//! WeCom's rules for uploaded media (media/upload): the four types, their size limits and the
//! formats WeCom accepts, checked before anything is uploaded.
//!
//! Must never: do I/O; it judges bytes it is given.

/// Every upload must be larger than this many bytes.
pub const MIN_BYTES: usize = 5;

/// A media/upload `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    Image,
    Voice,
    Video,
    File,
}

impl MediaType {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaType::Image => "image",
            MediaType::Voice => "voice",
            MediaType::Video => "video",
            MediaType::File => "file",
        }
    }

    /// WeCom's limit: image 10 MB, voice 2 MB, video 10 MB, file 20 MB.
    pub fn max_bytes(self) -> usize {
        const MB: usize = 1024 * 1024;
        match self {
            MediaType::Image | MediaType::Video => 10 * MB,
            MediaType::Voice => 2 * MB,
            MediaType::File => 20 * MB,
        }
    }

    /// The file name used when none is given.
    pub fn default_file_name(self) -> &'static str {
        match self {
            MediaType::Image => "image.png",
            MediaType::Voice => "voice.amr",
            MediaType::Video => "video.mp4",
            MediaType::File => "file.bin",
        }
    }

    /// Whether `bytes` is a format WeCom takes for this type (image: JPG or PNG, voice: AMR,
    /// video: MP4; a file may be anything), and its content type.
    pub fn content_type(self, bytes: &[u8]) -> Option<&'static str> {
        match self {
            MediaType::Image if bytes.starts_with(b"\x89PNG\r\n\x1a\n") => Some("image/png"),
            MediaType::Image if bytes.starts_with(b"\xff\xd8\xff") => Some("image/jpeg"),
            MediaType::Voice if bytes.starts_with(b"#!AMR") => Some("audio/amr"),
            MediaType::Video if bytes.get(4..8) == Some(b"ftyp") => Some("video/mp4"),
            MediaType::File => Some("application/octet-stream"),
            _ => None,
        }
    }

    /// The size rule alone, for a file whose length is known before it is read.
    pub fn check_size(self, len: u64) -> Result<(), MediaRefused> {
        let max = self.max_bytes();
        if len <= MIN_BYTES as u64 || len > max as u64 {
            let kind = self.as_str();
            return Err(MediaRefused::Size { kind, len, max });
        }
        Ok(())
    }

    /// Size and format; the content type to upload with.
    pub fn check(self, bytes: &[u8]) -> Result<&'static str, MediaRefused> {
        self.check_size(bytes.len() as u64)?;
        self.content_type(bytes).ok_or_else(|| {
            let wanted = match self {
                MediaType::Image => "JPG or PNG",
                MediaType::Voice => "AMR",
                _ => "MP4",
            };
            MediaRefused::Format {
                kind: self.as_str(),
                wanted,
            }
        })
    }
}

/// Why WeCom would refuse a file: its size or its format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaRefused {
    #[error("{kind} of {len} bytes is outside WeCom's limits (more than {MIN_BYTES} bytes, at most {max})")]
    Size {
        kind: &'static str,
        len: u64,
        max: usize,
    },
    #[error("WeCom takes {kind} only as {wanted}")]
    Format {
        kind: &'static str,
        wanted: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_formats() {
        let png = [b"\x89PNG\r\n\x1a\n".as_slice(), &[0; 10]].concat();
        assert_eq!(MediaType::Image.check(&png), Ok("image/png"));
        assert!(MediaType::Image.check(b"GIF89a-----").is_err());
        assert!(
            MediaType::File.check(b"12345").is_err(),
            "5 bytes is too small"
        );
        assert_eq!(
            MediaType::File.check(b"123456"),
            Ok("application/octet-stream")
        );
        assert!(MediaType::Voice.check_size(2 * 1024 * 1024 + 1).is_err());
        assert!(MediaType::Voice.check(b"#!AMR\n123").is_ok());
        assert!(MediaType::Video.check(b"\0\0\0\x18ftypmp42").is_ok());
    }
}
