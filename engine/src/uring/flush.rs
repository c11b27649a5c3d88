//! Writing what the core queued: one linked send per connection with frames, tearing
//! down closed connections, and the send-buffer pool.
//!
//! Owns the write side of every socket. Does not own reading (`completions`).

use super::buffers::SendOp;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::time::Duration;

use crate::clock::{self, Now};

use io_uring::{cqueue, opcode, types};

use crate::core::ConnState;

use super::*;

impl Shard {
    /// After the core ran: tear down closed connections, write queued frames, re-arm.
    pub(super) fn after_core(&mut self) {
        let mut list = std::mem::take(&mut self.scratch);
        self.core.take_wake(&mut list);
        for &slot in &list {
            if self.core_state(slot) == Some(ConnState::Closed) {
                self.tear_down(slot);
            }
        }
        self.core.take_dirty(&mut list);
        list.append(&mut self.resend);
        for &slot in &list {
            self.send(slot);
        }
        list.clear();
        let mut rearm = std::mem::take(&mut self.rearm);
        let mut resumed = std::mem::take(&mut self.scratch);
        self.core.take_resumed(&mut resumed);
        rearm.append(&mut resumed);
        self.scratch = resumed;
        for &slot in &rearm {
            self.arm_recv(slot);
        }
        rearm.clear();
        self.rearm = rearm;
        self.scratch = list;
        self.core.record_flush_latency(Now::read());
        self.core.end_turn();
        self.wake_shards();
    }

    pub(super) fn core_state(&self, slot: u32) -> Option<ConnState> {
        let s = self.socks.get(slot as usize)?;
        if !s.live {
            return None;
        }
        self.core.state(crate::core::ConnKey { slot, gen: s.gen })
    }

    /// Hot path: queue one send with every frame waiting for `slot` (up to `IOV_MAX`).
    pub(super) fn send(&mut self, slot: u32) {
        let Some(sock) = self.socks.get(slot as usize) else {
            return;
        };
        if !sock.live || sock.tearing_down || sock.send.is_some() {
            return; // A completion will continue (or nothing is left to write).
        }
        let (fd, gen) = (sock.fd, sock.gen);
        let Some(out) = self.core.out_mut(slot) else {
            return;
        };
        if out.is_empty() {
            return;
        }
        let mut op = self.pool.pop().unwrap_or_else(SendOp::new);
        let (n, offset) = out.pin(IOV_MAX);
        let sqe = if n == 1 {
            let Some(front) = out.frames().next() else {
                return;
            };
            let f = &front[offset..];
            opcode::Send::new(types::Fd(fd), f.as_ptr(), f.len() as u32)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        } else {
            for (i, f) in out.frames().take(n).enumerate() {
                let b = if i == 0 { &f[offset..] } else { &f[..] };
                op.iov[i] = libc::iovec {
                    iov_base: b.as_ptr().cast_mut().cast(),
                    iov_len: b.len(),
                };
            }
            op.hdr.msg_iov = op.iov.as_mut_ptr();
            op.hdr.msg_iovlen = n;
            opcode::SendMsg::new(types::Fd(fd), &op.hdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()
        };
        let sqe = sqe.user_data(user_data(OP_SEND, slot, gen));
        self.socks[slot as usize].send = Some(op);
        self.sends_in_flight += 1;
        self.sends_peak = self.sends_peak.max(self.sends_in_flight);
        self.push(&sqe);
    }

    /// The core closed `slot`: cancel what is in flight; `maybe_finish` closes the fd.
    pub(super) fn tear_down(&mut self, slot: u32) {
        let Some(sock) = self.socks.get_mut(slot as usize) else {
            return;
        };
        if !sock.live || sock.tearing_down {
            return;
        }
        sock.tearing_down = true;
        if sock.ops() > 0 {
            let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(sock.fd)).all())
                .build()
                .user_data(user_data(OP_CANCEL, slot, sock.gen));
            self.push(&sqe);
        }
        self.maybe_finish(slot);
    }

    /// Close and forget a torn-down connection once nothing of it is in flight.
    pub(super) fn maybe_finish(&mut self, slot: u32) {
        let Some(sock) = self.socks.get_mut(slot as usize) else {
            return;
        };
        if !sock.live {
            return;
        }
        if !sock.tearing_down {
            // The core may have closed it during this completion.
            let key = crate::core::ConnKey {
                slot,
                gen: sock.gen,
            };
            if self.core.state(key) == Some(ConnState::Closed) {
                return self.tear_down(slot);
            }
            return;
        }
        if sock.ops() > 0 {
            return;
        }
        let fd = sock.fd;
        *sock = Sock::default();
        let sqe = opcode::Close::new(types::Fd(fd))
            .build()
            .user_data(user_data(OP_CLOSE, slot, 0));
        self.push(&sqe);
        self.core.remove(slot);
    }

    /// Give back send operations kept for a burst that is over.
    pub(super) fn trim_pool(&mut self) {
        let keep = self.sends_peak.max(SEND_POOL_MIN);
        self.pool.truncate(keep);
        self.sends_peak = self.sends_in_flight;
    }

    /// Stop: cancel every operation and close every socket, then wait (briefly) for the
    /// kernel to finish with our memory before the ring and buffers are dropped.
    pub(super) fn close_everything(&mut self) {
        let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::any())
            .build()
            .user_data(user_data(OP_CANCEL, 0, 0));
        self.push(&sqe);
        let deadline = clock::mono() + Duration::from_secs(1);
        while self.outstanding > 0 && clock::mono() < deadline {
            let ts = types::Timespec::new().nsec(10_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.clear();
            cqes.extend(self.ring.completion());
            for cqe in &cqes {
                if !cqueue::more(cqe.flags()) {
                    self.outstanding = self.outstanding.saturating_sub(1);
                }
                let (op, _, slot) = split_user_data(cqe.user_data());
                if op == OP_SEND {
                    if let Some(s) = self.socks.get_mut(slot as usize) {
                        s.send = None;
                    }
                }
            }
            self.cqes = cqes;
        }
        for s in &mut self.socks {
            if s.live {
                // SAFETY: closing descriptors we own; nothing uses them after this.
                unsafe { libc::close(s.fd) };
                s.live = false;
            }
        }
        if self.outstanding > 0 {
            tracing::warn!(
                shard = self.id,
                outstanding = self.outstanding,
                "io_uring operations still in flight at exit; leaking the shard's memory"
            );
        }
    }
}

pub(super) fn peer_ip(fd: RawFd) -> Option<IpAddr> {
    // SAFETY: an all-zero sockaddr_storage is valid; getpeername fills it.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` has room for any address and `len` says so.
    if unsafe {
        libc::getpeername(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    } != 0
    {
        return None;
    }
    // SAFETY: `storage` and `len` come straight from getpeername.
    let addr = unsafe { socket2::SockAddr::new(storage, len) };
    addr.as_socket().map(|a: SocketAddr| a.ip())
}

pub(super) fn set_nodelay(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: sets an int option from a live local on a socket we own.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}
