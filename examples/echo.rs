//! A tiny echo upstream for trying sluice by hand:
//!
//! ```sh
//! cargo run --example echo -- 127.0.0.1:8000      # echoes every byte back
//! cargo run --release -- -c proxy.yaml            # 127.0.0.1:8080 -> 127.0.0.1:8000
//! printf 'hello\n' | nc -q1 127.0.0.1 8080        # prints hello
//! ```
//!
//! One thread per connection; it passes a half-close on (EOF from the client
//! becomes a FIN back once everything is echoed), like a well-behaved server.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};

fn main() -> io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8000".to_owned());
    let listener = TcpListener::bind(&addr)?;
    eprintln!("echo: listening on {}", listener.local_addr()?);
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                std::thread::spawn(move || {
                    if let Err(e) = echo(stream) {
                        eprintln!("echo: {e}");
                    }
                });
            }
            Err(e) => eprintln!("echo: accept: {e}"),
        }
    }
    Ok(())
}

fn echo(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = vec![0; 64 << 10];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return stream.shutdown(Shutdown::Write);
        }
        stream.write_all(&buf[..n])?;
    }
}
