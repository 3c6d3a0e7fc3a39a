// Drive a shell session with the npm package `ssm-session` (a third-party client that never
// retransmits and writes garbage payload digests): node ssm_session_client.js URL TOKEN CMD...
// Each CMD is typed with a trailing carriage return; prints everything the shell printed.
const WebSocket = require("ws");
const { ssm } = require("ssm-session");

const [url, token, ...commands] = process.argv.slice(2);
const termOptions = { rows: 30, cols: 120 };
const decoder = new TextDecoder();
let output = "";
const socket = new WebSocket(url);
socket.binaryType = "arraybuffer";
const timer = setTimeout(() => { process.stdout.write(output); process.exit(3); }, 20000);

socket.on("open", () => {
  ssm.init(socket, { token, termOptions });
  let delay = 300;
  for (const cmd of commands) {
    setTimeout(() => ssm.sendText(socket, new TextEncoder().encode(cmd + "\r")), delay);
    delay += 300;
  }
});
socket.on("message", (data) => {
  const message = ssm.decode(data);
  ssm.sendACK(socket, message);
  if (message.messageType === "output_stream_data" && message.payloadType === 1) {
    output += decoder.decode(message.payload);
  } else if (message.messageType === "channel_closed") {
    clearTimeout(timer);
    process.stdout.write(output);
    process.exit(0);
  }
});
socket.on("close", () => { clearTimeout(timer); process.stdout.write(output); process.exit(0); });
socket.on("error", (err) => { console.error(String(err)); process.exit(2); });
