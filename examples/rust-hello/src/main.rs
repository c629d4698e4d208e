//! A small web app for enjin in Rust with only the standard library: it serves HTTP/1.1 with
//! keep-alive on $PORT, answers /healthz, and says which release and instance answered.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;

fn serve(stream: TcpStream, greeting: &str) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut close = false;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            let h = header.trim_end();
            if h.is_empty() {
                break;
            }
            if h.eq_ignore_ascii_case("connection: close") {
                close = true;
            }
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        let body = if path == "/healthz" { "ok\n".to_string() } else { format!("{greeting}\n") };
        write!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        )?;
        out.flush()?;
        if close {
            return Ok(());
        }
    }
}

fn main() -> std::io::Result<()> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8000".into());
    let release = std::env::var("ENJIN_RELEASE").unwrap_or_else(|_| "dev".into());
    let instance = std::env::var("ENJIN_INSTANCE").unwrap_or_else(|_| "local".into());
    let greeting = format!("hello from rust ({release}, {instance})");
    let listener = TcpListener::bind(format!("0.0.0.0:{port}"))?;
    println!("listening on port {port}");
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let _ = stream.set_nodelay(true);
        let greeting = greeting.clone();
        thread::spawn(move || {
            let _ = serve(stream, &greeting);
        });
    }
    Ok(())
}
