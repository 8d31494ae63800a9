use super::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    (a, b)
}

fn owner(key: usize, dir: u8) -> Owner {
    Owner { key, id: key as u64 + 100, dir }
}

/// The next completion, submitting and waiting (bounded) for it.
fn wait(ring: &mut Ring) -> Completion {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        ring.submit().unwrap();
        if let Some(c) = ring.next_completion() {
            return c;
        }
        assert!(Instant::now() < deadline, "no completion within 5 s");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn received_bytes_are_sent_on_exactly_and_eof_ends_the_receive() {
    let mut ring = Ring::new(4096, 64).unwrap();
    let (mut src_peer, src) = pair();
    let (dst, mut dst_peer) = pair();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let sent = data.clone();
    let writer = std::thread::spawn(move || {
        src_peer.write_all(&sent).unwrap();
        // EOF after the bytes.
    });
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        dst_peer.read_to_end(&mut got).unwrap();
        got
    });
    let me = owner(1, 0);
    ring.recv(src.as_raw_fd(), me, Receive::Multishot);
    let (mut queue, mut sending, mut eof) = (std::collections::VecDeque::<Held>::new(), false, false);
    while !(eof && queue.is_empty()) {
        let c = wait(&mut ring);
        assert_eq!(c.owner, me);
        match c.done {
            Done::Received(Ok(None)) => eof = true,
            Done::Received(Ok(Some(h))) => queue.push_back(h),
            Done::Received(Err(e)) => {
                // Out of buffers: the ring grew (up to its cap) and says so.
                assert_eq!(e, nix::libc::ENOBUFS);
                assert_eq!(ring.take_unstarved(), Some(me));
                ring.recv(src.as_raw_fd(), me, Receive::Multishot);
            }
            Done::Sent(r) => {
                sending = false;
                let h = queue.front_mut().unwrap();
                h.start += r.unwrap();
                if h.is_empty() {
                    ring.recycle(h.bid);
                    queue.pop_front();
                }
            }
        }
        if let (false, Some(h)) = (sending, queue.front()) {
            ring.send(dst.as_raw_fd(), h, me);
            sending = true;
        }
    }
    writer.join().unwrap();
    dst.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(reader.join().unwrap() == data, "bytes differ");
    assert_eq!(ring.counts().lent, 0, "every buffer went back");
}

#[test]
fn a_cancelled_receive_that_had_taken_bytes_is_reported_lost() {
    let mut ring = Ring::new(4096, 16).unwrap();
    let (mut peer, s) = pair();
    let me = owner(3, 0);
    let op = ring.recv(s.as_raw_fd(), me, Receive::Multishot);
    ring.submit().unwrap();
    peer.write_all(b"last words").unwrap();
    // Let the receive complete in the kernel without reaping it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let watched = mio::net::TcpStream::from_std(s.try_clone().unwrap());
    while crate::sys::socket_queue::unread(&watched).unwrap_or(0) > 0 || ring.uring.completion().is_empty() {
        assert!(Instant::now() < deadline, "the receive never completed");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(ring.abandon(op), "a multishot receive stays in the table");
    assert_eq!(ring.settle(3, 103), [true, false], "the bytes it took are lost");
    assert!(ring.next_completion().is_none(), "an abandoned op reaches no one");
    assert_eq!(ring.counts().lent, 0, "its buffer went back");
}

#[test]
fn a_capped_ring_starves_a_receive_until_a_buffer_comes_back() {
    let mut ring = Ring::new(1024, 16).unwrap();
    let mut pairs: Vec<(TcpStream, TcpStream)> = (0..17).map(|_| pair()).collect();
    let mut held = Vec::new();
    for (i, (peer, s)) in pairs.iter_mut().enumerate() {
        ring.recv(s.as_raw_fd(), owner(i, 0), Receive::Multishot);
        peer.write_all(b"x").unwrap();
        let c = wait(&mut ring);
        match c.done {
            Done::Received(Ok(Some(h))) => held.push(h),
            Done::Received(Err(e)) => {
                assert_eq!((i, e), (16, nix::libc::ENOBUFS), "only the 17th finds no buffer");
                assert!(!c.more, "no buffer ends a multishot receive");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(held.len(), 16);
    assert_eq!(ring.counts().buffers, 16, "grown to the cap, not past it");
    assert!(ring.take_unstarved().is_none(), "no buffer free yet");
    ring.recycle(held.pop().unwrap().bid);
    assert_eq!(ring.take_unstarved(), Some(owner(16, 0)), "the starved owner is told");
    // Its receive now gets the byte that waited.
    ring.recv(pairs[16].1.as_raw_fd(), owner(16, 0), Receive::Single);
    let c = wait(&mut ring);
    assert!(matches!(c.done, Done::Received(Ok(Some(h))) if ring.data(&h) == b"x"), "{c:?}");
}

/// An operation id kept after its operation finished (a completion still
/// on its way to its owner, say) must not reach the operation that took
/// its slot in the table since: another session's receive.
#[test]
fn a_stale_operation_id_reaches_no_other_operation() {
    let mut ring = Ring::new(4096, 16).unwrap();
    let (mut peer_a, a) = pair();
    let (mut peer_b, b) = pair();
    let old = ring.recv(a.as_raw_fd(), owner(1, 0), Receive::Single);
    peer_a.write_all(b"one").unwrap();
    let c = wait(&mut ring);
    assert!(c.op == old && !c.more, "{c:?}");
    let Done::Received(Ok(Some(h))) = c.done else { panic!("{c:?}") };
    ring.recycle(h.bid);
    // Another session's multishot receive, in the slot the first one left.
    let other = owner(2, 0);
    ring.recv(b.as_raw_fd(), other, Receive::Multishot);
    ring.submit().unwrap();
    // The first session gives up its receive, not knowing it completed.
    ring.stop(old);
    assert!(!ring.abandon(old), "an operation that completed is no longer in flight");
    peer_b.write_all(b"two").unwrap();
    let c = wait(&mut ring);
    assert_eq!(c.owner, other);
    assert!(
        matches!(c.done, Done::Received(Ok(Some(h))) if ring.data(&h) == b"two") && c.more,
        "the other session's receive goes on: {c:?}"
    );
}

/// Completions that found the completion queue full wait in the kernel
/// until an `io_uring_enter` flushes them: the ring must enter for them
/// even with nothing to submit.
#[test]
fn completions_that_overflowed_the_queue_still_arrive() {
    let mut ring = Ring::new(4096, 16).unwrap();
    let (mut peer, s) = pair();
    let me = owner(4, 0);
    ring.recv(s.as_raw_fd(), me, Receive::Single);
    ring.submit().unwrap();
    // Fill the completion queue, and more, with completions nobody reaps.
    let mut left = ring.uring.completion().capacity() + 64;
    while left > 0 {
        for _ in 0..left.min(SQ_ENTRIES as usize) {
            // SAFETY: a no-op refers to no memory.
            unsafe { ring.uring.submission().push(&opcode::Nop::new().build().user_data(CANCEL)) }.unwrap();
            left -= 1;
        }
        ring.uring.submit().unwrap();
    }
    assert!(ring.uring.submission().cq_overflow(), "the completion queue overflowed");
    // The receive's completion goes to the kernel's overflow list.
    peer.write_all(b"late").unwrap();
    let c = wait(&mut ring);
    assert_eq!(c.owner, me);
    assert!(matches!(c.done, Done::Received(Ok(Some(h))) if ring.data(&h) == b"late"), "{c:?}");
}

/// Makes this thread's `io_uring_enter` fail with `errno` (a seccomp
/// filter; it dies with the thread).
fn refuse_enter(errno: u32) {
    use nix::libc::{
        BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W, PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP,
        SECCOMP_MODE_FILTER, SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO, SYS_io_uring_enter, sock_filter, sock_fprog,
    };
    let op = |code: u32, k: u32, jt: u8, jf: u8| sock_filter { code: code as u16, jt, jf, k };
    let mut filter = [
        op(BPF_LD | BPF_W | BPF_ABS, 0, 0, 0), // the syscall number
        op(BPF_JMP | BPF_JEQ | BPF_K, SYS_io_uring_enter as u32, 0, 1),
        op(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | errno, 0, 0),
        op(BPF_RET | BPF_K, SECCOMP_RET_ALLOW, 0, 0),
    ];
    let prog = sock_fprog { len: filter.len() as u16, filter: filter.as_mut_ptr() };
    // SAFETY: plain prctl calls; the filter program outlives the call that copies it.
    unsafe {
        assert_eq!(nix::libc::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(nix::libc::prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog as *const sock_fprog), 0);
    }
}

/// A submission queue that is full while the kernel refuses to take it
/// (`EBUSY`) holds operations back; it is not a failure of the sockets
/// they are for. Once the kernel takes submissions again, all of them run.
#[test]
fn a_full_submission_queue_is_backpressure_not_a_failure() {
    let mut ring = Ring::new(4096, 16).unwrap();
    let mut pairs: Vec<(TcpStream, TcpStream)> = (0..SQ_ENTRIES as usize + 8).map(|_| pair()).collect();
    let fds: Vec<RawFd> = pairs.iter().map(|(_, s)| s.as_raw_fd()).collect();
    /// The ring, lent to one other thread while this one waits for it.
    struct Lent<'a>(&'a mut Ring);
    // SAFETY: one thread at a time uses the ring (the scope joins before this
    // thread touches it again), and the other thread gets no request into
    // the kernel (its every io_uring_enter fails), so none is tied to it.
    unsafe impl Send for Lent<'_> {}
    let lent = Lent(&mut ring);
    std::thread::scope(|t| {
        t.spawn(move || {
            let lent = lent;
            refuse_enter(nix::libc::EBUSY as u32);
            for (i, fd) in fds.into_iter().enumerate() {
                lent.0.recv(fd, owner(i, 0), Receive::Single);
            }
            let _ = lent.0.submit();
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    });
    // Back on a thread whose io_uring_enter works: every receive gets its byte.
    for (i, (peer, _)) in pairs.iter_mut().enumerate() {
        peer.write_all(&[i as u8]).unwrap();
        let c = wait(&mut ring);
        assert_eq!(c.owner, owner(i, 0));
        assert!(matches!(c.done, Done::Received(Ok(Some(h))) if ring.data(&h) == [i as u8]), "receive {i}: {c:?}");
        if let Done::Received(Ok(Some(h))) = c.done {
            ring.recycle(h.bid);
        }
    }
}
