// The browser terminal: a login shell in the sandbox through the terminal
// routes, with the token this page was opened with. The terminal's pid is kept
// for this tab, so a reload reconnects and replays the screen instead of
// starting another shell. Framing: docs/terminals.md.
(function () {
  "use strict";
  const sandboxId = decodeURIComponent(location.pathname.split("/").pop());
  const token = new URLSearchParams(location.search).get("token") || "";
  const api = new URL("../v1/sandboxes/" + encodeURIComponent(sandboxId) + "/pty", location.href);
  const storageKey = "sandbank-pty:" + sandboxId;

  const term = new Terminal({ cursorBlink: true, scrollback: 5000, convertEol: false });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open(document.getElementById("terminal"));
  fit.fit();
  term.focus();

  let socket = null;
  const encoder = new TextEncoder();

  function note(text) {
    term.write("\r\n\x1b[2m[" + text + "]\x1b[0m\r\n");
  }

  function send(data) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(data);
  }

  term.onData((text) => send(encoder.encode(text)));
  term.onBinary((text) => send(Uint8Array.from(text, (c) => c.charCodeAt(0))));
  term.onResize(({ cols, rows }) => send(JSON.stringify({ type: "resize", cols, rows })));
  window.addEventListener("resize", () => fit.fit());

  async function create() {
    const response = await fetch(api, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-Sandbank-Token": token },
      body: JSON.stringify({ cols: term.cols, rows: term.rows }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error(body.message || response.statusText);
    sessionStorage.setItem(storageKey, String(body.pid));
    return body.pid;
  }

  function connect(pid) {
    const url = new URL(api.href + "/" + pid + "/ws");
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.searchParams.set("token", token);
    socket = new WebSocket(url);
    socket.binaryType = "arraybuffer";
    socket.onopen = () => send(JSON.stringify({ type: "resize", cols: term.cols, rows: term.rows }));
    socket.onmessage = (message) => {
      if (typeof message.data !== "string") {
        term.write(new Uint8Array(message.data));
        return;
      }
      const event = JSON.parse(message.data);
      if (event.type === "exit") {
        sessionStorage.removeItem(storageKey);
        note("the shell exited with code " + event.exit_code + "; reload for a new one");
      } else if (event.type === "error") {
        note(event.message);
      }
    };
    socket.onclose = (close) => {
      if (close.code === 4404 || close.code === 4409) sessionStorage.removeItem(storageKey);
      if (close.code !== 1000) note("disconnected (" + (close.reason || close.code) + ")");
    };
  }

  async function start() {
    let pid = sessionStorage.getItem(storageKey);
    if (pid) {
      const response = await fetch(api.href + "/" + pid, { headers: { "X-Sandbank-Token": token } });
      const body = await response.json().catch(() => ({}));
      if (!response.ok || !body.running) pid = null;
    }
    try {
      connect(pid || (await create()));
    } catch (error) {
      note("cannot open a terminal: " + error.message);
    }
  }

  start();
})();
