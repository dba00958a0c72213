"""The web app's one page (HTML, CSS and JavaScript, no outside resources): generate/app.py serves it."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>generate: GRU models</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1rem; color: #222; }
h1 { font-size: 1.4rem; margin: 0 0 .6rem; }
.row { display: flex; gap: 1.2rem; flex-wrap: wrap; }
.panel { border: 1px solid #ccc; border-radius: 6px; padding: .8rem; flex: 1 1 300px; }
label { display: block; font-size: .85rem; margin: .45rem 0 .1rem; }
input, select, textarea { width: 100%; box-sizing: border-box; font: inherit; }
textarea { height: 4rem; }
button { margin-top: .8rem; font-size: 1rem; padding: .4rem 1.2rem; }
#card { font-size: .85rem; } #card td { padding: 0 .6rem 0 0; }
#error { color: #b00020; font-weight: 600; margin: .6rem 0; white-space: pre-wrap; }
#audio-note { font-size: .8rem; color: #555; }
pre.text-sample { white-space: pre-wrap; background: #f6f6f6; padding: .6rem; border-radius: 4px; }
.music-sample { border-top: 1px solid #ddd; padding: .6rem 0; }
.music-sample img { width: 100%; max-width: 900px; display: block; }
.music-sample a { margin-right: 1rem; }
.hidden { display: none; }
</style></head><body>
<h1>generate: sample a GRU model, listen and download</h1>
<div class="row">
 <div class="panel">
  <label for="model">Model</label><select id="model"></select>
  <table id="card"></table>
  <div id="text-controls">
   <label for="prompt">Prompt</label><textarea id="prompt">ROMEO:</textarea>
  </div>
  <div id="music-controls" class="hidden">
   <label for="primer">Primer (.mid, optional)</label><input id="primer" type="file" accept=".mid,.midi">
   <label for="instrument">Instrument</label><select id="instrument"></select>
  </div>
 </div>
 <div class="panel">
  <label for="temperature">Temperature (0 = greedy)</label><input id="temperature" type="number" step="0.05" value="0.8">
  <label for="top_k">Top-k (0 = off)</label><input id="top_k" type="number" value="0">
  <label for="top_p">Top-p (1 = off)</label><input id="top_p" type="number" step="0.05" value="1">
  <label for="length">Length (tokens)</label><input id="length" type="number" value="300">
  <label for="seed">Seed (sample i uses seed + i)</label><input id="seed" type="number" value="1337">
  <label for="num_samples">Number of samples</label><input id="num_samples" type="number" value="1" min="1" max="8">
  <button id="generate">Generate</button>
  <div id="audio-note"></div>
 </div>
</div>
<div id="error"></div>
<div id="results"></div>
<script>
let models = [];
const $ = (id) => document.getElementById(id);
const current = () => models[$("model").selectedIndex];
function showError(message) { $("error").textContent = message ? "error: " + message : ""; }
function showCard() {
  const m = current(); const card = m.card || {};
  const rows = [["origin", m.origin], ["dataset", card.dataset], ["tokenizer", card.tokenizer],
    ["parameters", card.parameters && card.parameters.toLocaleString()], ["training steps", card.steps],
    ["validation loss", card.val_loss == null ? "?" : card.val_loss.toFixed(4) + " nats/token"]];
  $("card").innerHTML = "";
  for (const [k, v] of rows) { const tr = $("card").insertRow(); tr.insertCell().textContent = k; tr.insertCell().textContent = v ?? "?"; }
  $("text-controls").classList.toggle("hidden", !!m.music);
  $("music-controls").classList.toggle("hidden", !m.music);
  showError(m.error || "");
}
function settings() {
  const s = { model: current().path };
  for (const k of ["temperature", "top_k", "top_p", "length", "seed", "num_samples"]) s[k] = $(k).value;
  return s;
}
async function generateText(s) {
  s.prompt = $("prompt").value;
  const response = await fetch("/api/text", { method: "POST", body: JSON.stringify(s) });
  const reader = response.body.getReader(); const decoder = new TextDecoder(); let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\\n")) >= 0) {
      const event = JSON.parse(buffer.slice(0, cut)); buffer = buffer.slice(cut + 1);
      if (event.error) { showError(event.error); continue; }
      let box = $("text-" + event.sample);
      if (!box) { box = document.createElement("pre"); box.id = "text-" + event.sample; box.className = "text-sample"; $("results").append(box); }
      box.textContent += event.text;
      if (event.done) box.dataset.done = "1";
    }
  }
}
function readFile(file) {
  return new Promise((resolve, reject) => { const r = new FileReader();
    r.onload = () => resolve(r.result.split(",")[1]); r.onerror = reject; r.readAsDataURL(file); });
}
async function generateMusic(s) {
  s.instrument = $("instrument").value;
  const file = $("primer").files[0];
  if (file) { s.primer_name = file.name; s.primer = await readFile(file); }
  const reply = await (await fetch("/api/music", { method: "POST", body: JSON.stringify(s) })).json();
  if (reply.error) { showError(reply.error); return; }
  for (const sample of reply.samples) {
    const div = document.createElement("div"); div.className = "music-sample";
    div.innerHTML = `<b>${sample.name}</b> (${sample.notes} notes, ${sample.seconds.toFixed(1)} s)<br>
      <audio controls preload="auto" src="${sample.wav}"></audio>
      <img class="piano-roll" alt="piano roll of ${sample.name}" src="${sample.png}"><br>
      <a class="download-mid" download href="${sample.mid}">${sample.name}.mid</a>
      <a class="download-musicxml" download href="${sample.musicxml}">${sample.name}.musicxml</a>
      <a class="download-wav" download href="${sample.wav}">${sample.name}.wav</a>`;
    $("results").append(div);
  }
}
$("generate").onclick = async () => {
  showError(""); $("results").innerHTML = ""; $("generate").disabled = true;
  try { current().music ? await generateMusic(settings()) : await generateText(settings()); }
  catch (e) { showError("the app did not answer (" + e + "); is it still running?"); }
  finally { $("generate").disabled = false; $("results").dataset.finished = Date.now(); }
};
(async () => {
  const reply = await (await fetch("/api/models")).json();
  models = reply.models; $("audio-note").textContent = "audio: " + reply.audio;
  for (const m of models) $("model").add(new Option(`${m.name} (${m.origin})`));
  for (const name of reply.instruments) $("instrument").add(new Option(name));
  $("model").onchange = showCard; showCard(); document.body.dataset.ready = "1";
})();
</script></body></html>
"""
