/* pipeserve console: confirmation of destructive forms, and the playground's streamed chat.
   Text from the server or a model is only ever set with textContent: it is shown, never parsed as HTML. */
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});

(() => {
  const form = document.getElementById("playground");
  if (!form) return;
  const chat = document.getElementById("chat");
  const shown = document.getElementById("request-json");
  const result = document.getElementById("result");
  const send = document.getElementById("send");
  let history = []; // the conversation so far: user and assistant messages

  function number(name, parse) {
    const text = form.elements[name].value.trim();
    if (text === "") return undefined;
    const value = parse(text);
    return Number.isNaN(value) ? text : value; // a bad value goes as typed, for the server to explain
  }

  function chatRequest(message) {
    const messages = [];
    const system = form.elements.system.value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push(...history);
    if (message !== undefined) messages.push({ role: "user", content: message });
    const body = {
      model: form.elements.model.value,
      messages,
      stream: true,
      stream_options: { include_usage: true },
    };
    const temperature = number("temperature", parseFloat);
    const maxTokens = number("max_tokens", (t) => parseInt(t, 10));
    if (temperature !== undefined) body.temperature = temperature;
    if (maxTokens !== undefined) body.max_completion_tokens = maxTokens;
    return body;
  }

  function showRequest() {
    const message = form.elements.message.value;
    shown.textContent = JSON.stringify(chatRequest(message || undefined), null, 2);
  }

  function bubble(role, text) {
    const empty = chat.querySelector(".empty");
    if (empty) empty.remove();
    const turn = document.createElement("div");
    turn.className = "turn role-" + role;
    const label = document.createElement("div");
    label.className = "role";
    label.textContent = role;
    const body = document.createElement("div");
    body.className = "text";
    body.textContent = text;
    turn.append(label, body);
    chat.append(turn);
    return body;
  }

  function errorText(data, status) {
    return data && data.error && data.error.message ? data.error.message : "The request failed (" + status + ").";
  }

  async function readStream(response, target) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let text = "";
    let chunks = 0;
    let completion = { id: "", usage: null, error: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) {
            completion.error = chunk.error.message;
            continue;
          }
          completion.id = chunk.id || completion.id;
          if (chunk.usage) completion.usage = chunk.usage;
          for (const choice of chunk.choices || []) {
            const piece = (choice.delta && (choice.delta.content || choice.delta.reasoning_content)) || "";
            if (piece) {
              text += piece;
              chunks += 1;
              target.textContent = text;
              target.dataset.chunks = String(chunks);
            }
          }
        }
      }
    }
    return { text, completion };
  }

  form.addEventListener("input", showRequest);
  form.addEventListener("change", showRequest);
  document.getElementById("reset").addEventListener("click", () => {
    history = [];
    chat.replaceChildren();
    result.textContent = "";
    showRequest();
  });

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const message = form.elements.message.value;
    if (!message.trim()) return;
    const body = chatRequest(message);
    shown.textContent = JSON.stringify(body, null, 2);
    bubble("user", message);
    const target = bubble("assistant", "");
    target.classList.add("streaming");
    send.disabled = true;
    result.textContent = "";
    try {
      const response = await fetch("/playground/chat", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": form.dataset.csrf },
        body: JSON.stringify({ request: body, log: form.elements.log.checked }),
        credentials: "same-origin",
      });
      const kind = response.headers.get("content-type") || "";
      if (!response.ok || !kind.startsWith("text/event-stream")) {
        const data = await response.json().catch(() => null);
        if (!response.ok) throw new Error(errorText(data, response.status));
        target.textContent = data.choices[0].message.content || "";
        history.push({ role: "user", content: message }, { role: "assistant", content: target.textContent });
        return;
      }
      const { text, completion } = await readStream(response, target);
      if (completion.error) throw new Error(completion.error);
      history.push({ role: "user", content: message }, { role: "assistant", content: text });
      form.elements.message.value = "";
      const usage = completion.usage;
      result.textContent = usage ? usage.prompt_tokens + " prompt + " + usage.completion_tokens + " completion tokens" : "";
      if (form.elements.log.checked && completion.id) {
        const link = document.createElement("a");
        link.href = "/?completion=" + encodeURIComponent(completion.id);
        link.textContent = "open the logged request";
        result.append(" · ", link);
      }
    } catch (error) {
      const problem = bubble("error", error.message);
      problem.parentElement.classList.add("error");
    } finally {
      target.classList.remove("streaming");
      send.disabled = false; // the request shown stays the one sent, until the form changes
    }
  });

  showRequest();
})();
