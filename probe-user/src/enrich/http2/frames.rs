//! HTTP/2 header-block frames, as the kernel copies them (a window of a send or read from its
//! first header-block frame on), back into header blocks: the window is split into frames,
//! other frames are passed over, a HEADERS frame's padding and priority are taken off,
//! CONTINUATION frames are appended, and the block is whole at END_HEADERS.

use thiserror::Error;

use crate::model::H2Frame;

const HEADERS: u8 = 1;
const CONTINUATION: u8 = 9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest header block put together (a larger one is not followed).
const BLOCK_MAX: usize = 64 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("the kernel missed bytes of the connection's header blocks")]
    Lost,
    #[error("a frame of type {0} where a header-block frame was expected")]
    Kind(u8),
    #[error("a frame's padding or priority is longer than the frame")]
    Malformed,
    #[error("a CONTINUATION frame outside a header block, or a HEADERS frame inside one")]
    Sequence,
    #[error("a header block over {BLOCK_MAX} bytes")]
    TooLarge,
}

/// A whole header block.
#[derive(Debug, PartialEq, Eq)]
pub struct Block {
    pub stream: u32,
    pub fragment: Vec<u8>,
}

/// The block being put together, for one connection and side.
#[derive(Debug, Default)]
pub struct Assembler {
    block: Option<Block>,
}

impl Assembler {
    /// Takes one window: the blocks it completes, in order; `Err` when the connection's frames
    /// can no longer be followed.
    pub fn take(&mut self, window: &H2Frame) -> Result<Vec<Block>, FrameError> {
        if window.lost {
            return Err(FrameError::Lost);
        }
        let mut blocks = Vec::new();
        let mut rest = &window.data[..];
        while let Some(&[l0, l1, l2, kind, ..]) = rest.get(..9) {
            let len = 9 + (usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2));
            let whole = rest.get(..len);
            if kind != HEADERS && kind != CONTINUATION {
                // Another frame: passed over (its end may lie past the window).
                let Some(_) = whole else { break };
                rest = &rest[len..];
                continue;
            }
            // The kernel copies header-block frames whole, or says the window is lost.
            let frame = whole.ok_or(FrameError::Lost)?;
            blocks.extend(self.frame_done(frame)?);
            rest = &rest[len..];
        }
        Ok(blocks)
    }

    fn frame_done(&mut self, frame: &[u8]) -> Result<Option<Block>, FrameError> {
        let [l0, l1, l2, kind, flags, s0, s1, s2, s3] = *frame.get(..9).ok_or(FrameError::Lost)?
        else {
            return Err(FrameError::Lost);
        };
        let len = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
        let payload = frame.get(9..).ok_or(FrameError::Lost)?;
        if payload.len() != len {
            return Err(FrameError::Lost);
        }
        let stream = u32::from_be_bytes([s0 & 0x7f, s1, s2, s3]);
        let block = match (kind, self.block.take()) {
            (HEADERS, None) => Block {
                stream,
                fragment: fragment(payload, flags)?.to_vec(),
            },
            (CONTINUATION, Some(mut block)) if block.stream == stream => {
                block.fragment.extend_from_slice(payload);
                block
            }
            (HEADERS | CONTINUATION, _) => return Err(FrameError::Sequence),
            (other, _) => return Err(FrameError::Kind(other)),
        };
        if block.fragment.len() > BLOCK_MAX {
            return Err(FrameError::TooLarge);
        }
        if flags & END_HEADERS != 0 {
            return Ok(Some(block));
        }
        self.block = Some(block);
        Ok(None)
    }
}

/// A HEADERS frame's header-block fragment: its payload without padding and priority.
fn fragment(payload: &[u8], flags: u8) -> Result<&[u8], FrameError> {
    let mut p = payload;
    let mut pad = 0usize;
    if flags & PADDED != 0 {
        let (&n, rest) = p.split_first().ok_or(FrameError::Malformed)?;
        pad = usize::from(n);
        p = rest;
    }
    if flags & PRIORITY != 0 {
        p = p.get(5..).ok_or(FrameError::Malformed)?;
    }
    let keep = p.len().checked_sub(pad).ok_or(FrameError::Malformed)?;
    Ok(&p[..keep])
}
