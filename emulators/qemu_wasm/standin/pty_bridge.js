// The stand-in's way to its console: `Module.pty`, an xterm-pty slave the page
// hands in, as QEMU-Wasm builds reach theirs (they link xterm-pty's own
// emscripten-pty.js, which needs an Emscripten newer than Debian's 3.1.6).
//
// main() runs in a pthread (PROXY_TO_PTHREAD, like QEMU-Wasm); the pty lives on
// the page's thread. Reads and writes are proxied there synchronously; waiting
// for input is an asynchronous proxy that stores 1 into a flag in wasm memory
// when the pty turns readable (or a signal comes), which the pthread waits on
// with memory.atomic.wait32.

mergeInto(LibraryManager.library, {
  standin_pty_write__proxy: 'sync',
  standin_pty_write__sig: 'iii',
  standin_pty_write: function(ptr, len) {
    Module['pty'].write(Array.from(HEAPU8.subarray(ptr, ptr + len)));
    return len;
  },

  // Bytes available now (up to len), 0 when there are none.
  standin_pty_read__proxy: 'sync',
  standin_pty_read__sig: 'iii',
  standin_pty_read: function(ptr, len) {
    var pty = Module['pty'];
    if (!pty.readable) return 0;
    var bytes = pty.read(len);
    HEAPU8.set(bytes, ptr);
    return bytes.length;
  },

  // Store 1 into *flag (and wake its waiter) once input is there or a signal came.
  standin_pty_wait__proxy: 'async',
  standin_pty_wait__sig: 'vi',
  standin_pty_wait: function(flag) {
    var pty = Module['pty'];
    var done = false;
    var handles = [];
    var wake = function() {
      if (done) return;
      done = true;
      handles.forEach(function(h) { h.dispose(); });
      Atomics.store(HEAP32, flag >> 2, 1);
      Atomics.notify(HEAP32, flag >> 2);
    };
    if (pty.readable) return wake();
    handles.push(pty.onReadable(wake));
    handles.push(pty.onSignal(wake));
  },

  // Terminal signals (^C) become a count the pthread reads: SIGINT interrupts the
  // running builtin, the way a tty's line discipline signals the foreground job.
  standin_pty_watch_signals__proxy: 'sync',
  standin_pty_watch_signals__sig: 'vi',
  standin_pty_watch_signals: function(counter) {
    Module['pty'].onSignal(function(name) {
      if (name === 'SIGINT') {
        Atomics.add(HEAP32, counter >> 2, 1);
        Atomics.notify(HEAP32, counter >> 2);
      }
    });
  },

  // Turn the line discipline's echo on or off (what `stty echo` / `stty -echo` do).
  standin_pty_set_echo__proxy: 'sync',
  standin_pty_set_echo__sig: 'vi',
  standin_pty_set_echo: function(on) {
    var pty = Module['pty'];
    var t = pty.ioctl('TCGETS');
    var ECHO = 8;
    var lflag = on ? (t.lflag | ECHO) : (t.lflag & ~ECHO);
    pty.ioctl('TCSETS', { iflag: t.iflag, oflag: t.oflag, cflag: t.cflag, lflag: lflag, cc: t.cc });
  },
});
