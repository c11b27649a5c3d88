//! Whether io_uring works here: the features the backend needs, and the locked-memory
//! limit its rings and buffers need.
//!
//! Owns the probe `io = "auto"` runs at start. Does not own running a ring.

use super::buffers::BufRing;
use std::io;

use io_uring::{cqueue, opcode, types, IoUring};

use crate::config::EngineConfig;

use super::*;

/// Why io_uring cannot run here, if it cannot: sets up a ring, checks every opcode the
/// shards use, registers a provided-buffer ring of the configured size (locked memory)
/// and runs a multishot receive over a socket pair. Cheap (well under a millisecond).
pub(crate) fn probe(cfg: &EngineConfig) -> Result<(), String> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if v.trim() == "2" {
            return Err("io_uring is disabled by the kernel (kernel.io_uring_disabled = 2)".into());
        }
    }
    let ring = IoUring::builder()
        .build(8)
        .map_err(|e| format!("io_uring_setup failed: {e} (forbidden by seccomp, a container policy or kernel.io_uring_disabled?)"))?;
    if !ring.params().is_feature_ext_arg() || !ring.params().is_feature_nodrop() {
        return Err(
            "the kernel's io_uring lacks EXT_ARG or NODROP (Linux 5.11 or later needed)".into(),
        );
    }
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("io_uring probe failed: {e}"))?;
    for (name, code) in [
        ("ACCEPT", opcode::AcceptMulti::CODE),
        ("RECV", opcode::RecvMulti::CODE),
        ("SEND", opcode::Send::CODE),
        ("SENDMSG", opcode::SendMsg::CODE),
        ("POLL_ADD", opcode::PollAdd::CODE),
        ("ASYNC_CANCEL", opcode::AsyncCancel2::CODE),
        ("CLOSE", opcode::Close::CODE),
        ("MSG_RING", opcode::MsgRingData::CODE),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("the kernel's io_uring does not support {name}"));
        }
    }
    let mut ring = ring;
    let bufs = BufRing::new(&ring, cfg.uring_buffers, cfg.uring_buffer_bytes).map_err(|e| {
        format!(
            "cannot register {} provided buffers of {} bytes: {e} (locked-memory limit: {})",
            cfg.uring_buffers,
            cfg.uring_buffer_bytes,
            memlock_limit()
        )
    })?;
    // Multishot receive (Linux 6.0) cannot be seen in the probe: try it.
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors socketpair writes.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(format!("socketpair: {}", io::Error::last_os_error()));
    }
    let result = (|| {
        let sqe = opcode::RecvMulti::new(types::Fd(fds[0]), BGID)
            .build()
            .user_data(1);
        // SAFETY: the receive reads into the registered buffer ring, alive until after
        // the ring is dropped at the end of this function.
        unsafe { ring.submission().push(&sqe) }.map_err(|_| "submission queue full".to_string())?;
        // SAFETY: writes 4 bytes from a static buffer to a socket we own.
        if unsafe { libc::write(fds[1], b"ping".as_ptr().cast(), 4) } != 4 {
            return Err(format!("write: {}", io::Error::last_os_error()));
        }
        let ts = types::Timespec::new().nsec(200_000_000);
        let args = types::SubmitArgs::new().timespec(&ts);
        ring.submitter()
            .submit_with_args(1, &args)
            .map_err(|e| format!("io_uring_enter failed: {e}"))?;
        let cqe = ring
            .completion()
            .next()
            .ok_or("no completion for a multishot receive")?;
        if cqe.result() != 4 || !cqueue::more(cqe.flags()) {
            return Err(format!(
                "multishot receive not supported (result {}, Linux 6.0 or later needed)",
                cqe.result()
            ));
        }
        Ok(())
    })();
    // SAFETY: closing the two descriptors socketpair gave us.
    unsafe {
        libc::close(fds[0]);
        libc::close(fds[1]);
    }
    drop(ring);
    drop(bufs);
    result
}

pub(super) fn memlock_limit() -> String {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return "unknown".into();
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        format!("{} KiB", lim.rlim_cur / 1024)
    }
}
