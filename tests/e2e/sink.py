"""A scripted SMTP server for outbound tests: a peer that can say 451, 550 or require
AUTH, and records what it accepted. Loopback only; every read has a timeout."""
import base64
import socketserver
import threading


class SmtpSink:
    def __init__(self, host, port, rcpt_code=250, data_codes=(250,), auth=None, broken_tls=False,
                 dsn=False):
        """rcpt_code: reply to every RCPT; data_codes: replies to successive messages'
        final dot (the last one repeats); auth: (user, password) required before MAIL;
        broken_tls: offer STARTTLS, then answer the handshake with garbage; dsn: offer
        DSN (RFC 3461), so the client passes NOTIFY/ORCPT/RET/ENVID on."""
        self.dsn = dsn
        self.envelope_lines = []  # every MAIL and RCPT line as sent
        self.rcpt_code = rcpt_code
        self.data_codes = list(data_codes)
        self.auth = auth
        self.broken_tls = broken_tls
        self.messages = []  # (mail_from, [rcpts], data bytes) of accepted messages
        self.attempts = 0   # messages whose data was received, accepted or not
        self.connections = 0      # connections accepted in total
        self.open_connections = 0
        self.max_concurrent = 0   # most connections open at once
        self.lock = threading.Lock()
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = 30

            def reply(self, line):
                self.wfile.write(line.encode() + b"\r\n")
                self.wfile.flush()

            def handle(self):
                with sink.lock:
                    sink.connections += 1
                    sink.open_connections += 1
                    sink.max_concurrent = max(sink.max_concurrent, sink.open_connections)
                try:
                    self.session()
                finally:
                    with sink.lock:
                        sink.open_connections -= 1

            def session(self):
                self.reply("220 sink.test ESMTP test sink")
                mail_from, rcpts, authed = None, [], sink.auth is None
                while True:
                    line = self.rfile.readline(4096)
                    if not line:
                        return
                    cmd = line.decode(errors="replace").strip()
                    verb = cmd.split(" ")[0].upper()
                    if verb in ("EHLO", "HELO"):
                        tls = "250-STARTTLS\r\n" if sink.broken_tls else ""
                        dsn = "250-DSN\r\n" if sink.dsn else ""
                        self.reply("250-sink.test\r\n250-8BITMIME\r\n" + tls + dsn + "250 AUTH PLAIN")
                    elif verb == "STARTTLS" and sink.broken_tls:
                        self.reply("220 go ahead")
                        self.wfile.write(b"this is not a TLS handshake\r\n" * 4)
                        self.wfile.flush()
                        return
                    elif verb == "AUTH":
                        token = cmd.split(" ")[2] if len(cmd.split(" ")) > 2 else ""
                        parts = base64.b64decode(token).split(b"\0") if token else []
                        ok = sink.auth and parts[1:] == [sink.auth[0].encode(), sink.auth[1].encode()]
                        authed = bool(ok)
                        self.reply("235 2.7.0 ok" if ok else "535 5.7.8 bad credentials")
                    elif verb == "MAIL":
                        with sink.lock:
                            sink.envelope_lines.append(cmd)
                        if not authed:
                            self.reply("530 5.7.0 Authentication required")
                            continue
                        mail_from, rcpts = cmd.split(":", 1)[1].split(" ")[0].strip("<>"), []
                        self.reply("250 2.1.0 ok")
                    elif verb == "RCPT":
                        with sink.lock:
                            sink.envelope_lines.append(cmd)
                        code = sink.rcpt_code
                        if code == 250:
                            rcpts.append(cmd.split(":", 1)[1].strip().split(" ")[0].strip("<>"))
                            self.reply("250 2.1.5 ok")
                        else:
                            self.reply(f"{code} {code // 100}.1.1 no such user here")
                    elif verb == "DATA":
                        if not rcpts:
                            self.reply("554 5.5.1 no valid recipients")
                            continue
                        self.reply("354 go ahead")
                        data = bytearray()
                        while True:
                            l = self.rfile.readline(65536)
                            if not l or l == b".\r\n":
                                break
                            data += l[1:] if l.startswith(b"..") else l
                        with sink.lock:
                            code = sink.data_codes[min(sink.attempts, len(sink.data_codes) - 1)]
                            sink.attempts += 1
                            if code == 250:
                                sink.messages.append((mail_from, list(rcpts), bytes(data)))
                        self.reply(f"{code} {code // 100}.0.0 {'queued' if code == 250 else 'try later'}")
                    elif verb == "RSET":
                        mail_from, rcpts = None, []
                        self.reply("250 ok")
                    elif verb == "QUIT":
                        self.reply("221 bye")
                        return
                    else:
                        self.reply("250 ok")

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self.server = Server((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
