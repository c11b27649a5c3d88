//! What the shard does when the kernel completes something: accepts, receives, sends,
//! and messages from other shards.
//!
//! Owns handing each completion to the core. Does not own submitting (`super`) or
//! writing queued frames (`flush`).

use super::flush::{peer_ip, set_nodelay};
use std::os::fd::RawFd;

use crate::clock::Now;

use io_uring::{cqueue, opcode, types};

use switchboard_protocol::handshake;

use crate::core::AfterFlush;
use crate::metrics::ShardMetrics;

use super::*;

impl Shard {
    pub(super) fn on_accept(&mut self, fd: RawFd) {
        let Some(peer) = peer_ip(fd) else {
            // SAFETY: we own the accepted descriptor.
            unsafe { libc::close(fd) };
            return;
        };
        set_nodelay(fd);
        match self.core.admit(peer, self.now) {
            Ok(key) => {
                let slot = key.slot as usize;
                if self.socks.len() <= slot {
                    self.socks.resize_with(slot + 1, Sock::default);
                }
                self.socks[slot] = Sock {
                    fd,
                    gen: key.gen,
                    live: true,
                    recv_armed: false,
                    recv_cancelling: false,
                    send: None,
                    tearing_down: false,
                };
                self.arm_recv(key.slot);
            }
            Err(refusal) => {
                let (status, reason) = refusal.http();
                let resp = handshake::error_response(status, reason);
                // Best effort, never waits: the socket is closed right after.
                // SAFETY: sends from a live buffer on a descriptor we own, then closes it.
                unsafe {
                    libc::send(
                        fd,
                        resp.as_ptr().cast(),
                        resp.len(),
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    );
                    libc::close(fd);
                }
            }
        }
    }

    /// Hot path: one receive completion.
    pub(super) fn on_recv(&mut self, slot: u32, gen: u32, res: i32, flags: u32, more: bool) {
        let Some(sock) = self.socks.get_mut(slot as usize) else {
            return;
        };
        debug_assert_eq!(sock.gen & 0x00ff_ffff, gen);
        if !more {
            sock.recv_armed = false;
            sock.recv_cancelling = false;
        }
        if res > 0 {
            let Some(bid) = cqueue::buffer_select(flags) else {
                self.core.on_io_error(slot, self.now);
                return;
            };
            if !sock.tearing_down {
                // Copying out (usually a few hundred bytes) gives the buffer straight
                // back, so the ring never waits on a connection's partial frame.
                self.read_buf
                    .extend_from_slice(self.bufs.get(bid, res as usize));
                self.bufs.push(bid);
                self.core.on_read(slot, &mut self.read_buf, self.now);
                self.read_buf.clear();
                if more && !self.core.wants_input(slot) {
                    self.pause_recv(slot);
                }
            } else {
                self.bufs.push(bid);
            }
            if !more {
                self.rearm.push(slot);
            }
        } else if res == 0 {
            self.core.on_eof(slot, self.now);
        } else if res == -libc::ENOBUFS {
            // The ring ran dry this turn: arm again once the buffers are back.
            ShardMetrics::add(&self.core.metrics().uring_buffers_exhausted, 1);
            self.rearm.push(slot);
        } else if res == -libc::ECANCELED {
            // Cancelled for a pause the core may have lifted meanwhile.
            if !more && !self.socks[slot as usize].tearing_down {
                self.rearm.push(slot);
            }
        } else {
            self.core.on_io_error(slot, self.now);
        }
        self.maybe_finish(slot);
    }

    /// The core paused `slot`'s input (its replies pile up, or its `connect` is being
    /// verified): stop the multishot receive, so the kernel's receive buffer fills and
    /// TCP slows the client. Re-armed when the core lists it in `take_resumed`.
    fn pause_recv(&mut self, slot: u32) {
        let Some(sock) = self.socks.get_mut(slot as usize) else {
            return;
        };
        if !sock.recv_armed || sock.recv_cancelling || sock.tearing_down {
            return;
        }
        sock.recv_cancelling = true;
        let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::user_data(user_data(
            OP_RECV, slot, sock.gen,
        )))
        .build()
        .user_data(user_data(OP_CANCEL, slot, sock.gen));
        self.push(&sqe);
    }

    pub(super) fn on_send(&mut self, slot: u32, res: i32) {
        let Some(sock) = self.socks.get_mut(slot as usize) else {
            return;
        };
        let Some(op) = sock.send.take() else {
            return;
        };
        let fd = sock.fd;
        let tearing_down = sock.tearing_down;
        self.pool.push(op);
        self.sends_in_flight -= 1;
        if tearing_down {
            return self.maybe_finish(slot);
        }
        if res >= 0 {
            self.core.written(slot, res as usize);
            let Some(out) = self.core.out_mut(slot) else {
                return;
            };
            out.unpin();
            if !out.is_empty() {
                self.resend.push(slot);
            } else if self.core.flushed(slot) == AfterFlush::ShutdownWrite {
                // SAFETY: shuts down the write side of a socket we own.
                unsafe { libc::shutdown(fd, libc::SHUT_WR) };
            }
        } else if res != -libc::ECANCELED {
            if let Some(out) = self.core.out_mut(slot) {
                out.unpin();
            }
            self.core.on_io_error(slot, self.now);
        }
    }

    pub(super) fn drain_inbox(&mut self) {
        self.inbox_more = false;
        let mesh = self.mesh.clone();
        let inbox = mesh.inbox(self.id);
        let mut n = 0;
        let now = Now::read();
        while let Some(msg) = inbox.pop() {
            self.core.on_message(msg, now);
            n += 1;
            if n == INBOX_BUDGET {
                self.inbox_more = true;
                break;
            }
        }
    }

    /// Wake the shards the core pushed messages to: a ring message straight into each
    /// io_uring shard's completion queue, submitted with this turn's other work (no
    /// eventfd write here, no eventfd read there).
    pub(super) fn wake_shards(&mut self) {
        let mut wakes = self.core.take_wakes();
        while wakes != 0 {
            let shard = wakes.trailing_zeros() as usize;
            wakes &= wakes - 1;
            let inbox = self.mesh.inbox(shard);
            match inbox.ring_fd() {
                Some(fd) => {
                    let sqe = opcode::MsgRingData::new(
                        types::Fd(fd),
                        0,
                        user_data(OP_WAKE_IN, 0, 0),
                        None,
                    )
                    .build()
                    .user_data(user_data(OP_WAKE_SENT, shard as u32, 0));
                    self.push(&sqe);
                }
                None => inbox.wake(),
            }
        }
    }
}
