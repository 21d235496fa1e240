//! Captured writes of Wasm runtimes: data chunks, and what the fd was.

#[allow(clippy::wildcard_imports)]
use super::*;

/// Classifies an fd from its inode's mode and device number (uapi S_IF* types; Linux device
/// numbers: 1:3 is /dev/null, majors 4, 5 and 136-143 are terminals).
pub fn fd_kind(mode: u32, rdev: u32) -> Option<&'static str> {
    let (major, minor) = (rdev >> 20, rdev & 0xf_ffff);
    Some(match mode & 0o170000 {
        0 => return None,
        0o010000 => "pipe",
        0o140000 => "socket",
        0o100000 => "file",
        0o020000 if (major, minor) == (1, 3) => "/dev/null",
        0o020000 if major == 4 || major == 5 || (136..=143).contains(&major) => "tty",
        0o020000 => "char_device",
        0o060000 => "block_device",
        0o040000 => "directory",
        _ => "other",
    })
}

pub(super) fn wasm_write(ev: &WriteEvent) -> Result<WasmWrite, DecodeError> {
    let len = ev.chunk_len as usize;
    let data = ev
        .data
        .get(..len)
        .ok_or(DecodeError::ChunkLen(ev.chunk_len))?;
    Ok(WasmWrite {
        fd: ev.fd,
        runtime: ev.runtime,
        offset: ev.offset,
        total_len: ev.total_len,
        truncated: ev.flags & WRITE_TRUNCATED != 0,
        unreadable: ev.flags & WRITE_UNREADABLE != 0,
        data: data.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::tests::{bytes_of, header, tables};
    use probe_common::kind;

    #[test]
    fn fd_kinds_from_inode_mode_and_rdev() {
        assert_eq!(fd_kind(0o010600, 0), Some("pipe"));
        assert_eq!(fd_kind(0o140777, 0), Some("socket"));
        assert_eq!(fd_kind(0o100644, 0), Some("file"));
        assert_eq!(fd_kind(0o020666, (1 << 20) | 3), Some("/dev/null"));
        assert_eq!(fd_kind(0o020620, (136 << 20) | 2), Some("tty"));
        assert_eq!(fd_kind(0o020666, (1 << 20) | 5), Some("char_device"));
        assert_eq!(fd_kind(0, 0), None);
    }

    fn write_event(chunk_len: u32) -> WriteEvent {
        let mut data = [0u8; WRITE_CHUNK];
        data[..6].copy_from_slice(b"hello\n");
        WriteEvent {
            header: EventHeader {
                kind: kind::WASM_WRITE,
                ..header(HDR_TASK | HDR_CGROUP)
            },
            fd: 2,
            flags: WRITE_TRUNCATED,
            total_len: 70_000,
            offset: 4096,
            chunk_len,
            runtime: 1,
            data,
        }
    }

    #[test]
    fn wasm_write_round_trip_and_bad_chunk_length() {
        let d = decode(&bytes_of(&write_event(6)), &tables()).unwrap();
        assert_eq!(d.common.comm.as_deref(), Some("curl"));
        assert_eq!(
            d.body,
            Body::WasmWrite(WasmWrite {
                fd: 2,
                runtime: 1,
                offset: 4096,
                total_len: 70_000,
                truncated: true,
                unreadable: false,
                data: b"hello\n".to_vec(),
            })
        );
        assert_eq!(
            decode(&bytes_of(&write_event(5000)), &tables()),
            Err(DecodeError::ChunkLen(5000))
        );
        assert!(decode(&bytes_of(&write_event(6))[..200], &tables()).is_err());
    }

    #[test]
    fn wasm_write_result_round_trip() {
        let ev = WriteResultEvent {
            header: EventHeader {
                kind: kind::WASM_WRITE_RESULT,
                ..header(HDR_TASK)
            },
            fd: 1,
            file_mode: 0o020666,
            result: -32,
            file_rdev: (1 << 20) | 3,
            _reserved: 0,
        };
        let d = decode(&bytes_of(&ev), &tables()).unwrap();
        assert_eq!(
            d.body,
            Body::WasmWriteResult(WasmWriteResult {
                fd: 1,
                result: -32,
                fd_kind: Some("/dev/null"),
            })
        );
        assert!(decode(&bytes_of(&ev)[..70], &tables()).is_err());
    }
}
