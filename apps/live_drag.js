// Live drag: the page side of the editor's drag panel (fastdrag/apps/app.py, `LiveDrag`).
//
// Runs as the `js_on_load` of a Gradio HTML component: `element` is the component, `props.value`
// what the server last sent (token, base image, size, zoom, points, mode, preview, busy, status),
// `server.live_move` and `server.live_poll` call the server, `trigger('release')` tells Gradio a
// drag ended (it answers with a fresh `props.value`), `watch('value', ...)` hears that answer.
//
// The arrows follow the mouse here, with no round trip. The preview and the model's edit come
// from the server: one `live_move` at a time, always with the newest points (positions that
// arrive while one is in flight replace each other: the newest wins), and one `live_poll` loop
// while the server has work for this page. Points are image pixels (x, y).

const state = {
  view: null, // props.value
  points: [], // [[x, y], ...]: handle, target, handle, ...
  grab: -1, // the index of the point following the mouse
  created: false, // the press made a new drag
  moved: false,
  dragging: false,
  pointer: null, // the id of the pointer that drags
  inFlight: false,
  queued: null, // the newest points not yet sent
  polling: false,
  pollWanted: false, // poll() was asked for while a poll loop ran
  shown: 0, // the number of the newest result shown
  edited: false, // a live edit of this image is shown
  token: null,
  base: null, // the view's image, loaded
};

const find = (selector) => element.querySelector(selector);

function show(selector, url) {
  if (url) find(selector).src = url;
  else find(selector).removeAttribute("src");
}

function adopt() {
  const view = props.value;
  if (!view) return;
  if (!view.token) {
    // No image (none yet, or the editor was cleared).
    Object.assign(state, { view: null, points: [], token: null, shown: 0, dragging: false, queued: null });
    const canvas = find("#fd-points canvas");
    canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
    show("#fd-preview img", "");
    show("#fd-live img", "");
    find("#fd-live-label").textContent = "";
    return;
  }
  if (view.token !== state.token) {
    // Another live session (another image, or this page's session came back): its own results only.
    Object.assign(state, { token: view.token, shown: 0, edited: false, dragging: false, queued: null });
    show("#fd-live img", "");
    find("#fd-live-label").textContent = "";
  }
  if (!state.view || state.view.src !== view.src) {
    state.base = null;
    if (view.src) {
      const image = new Image();
      image.onload = () => {
        state.base = image;
        draw();
      };
      image.src = view.src;
    }
  }
  state.view = view;
  if (!state.dragging && !state.inFlight && !state.queued) state.points = view.points.map((p) => p.slice());
  show("#fd-preview img", view.preview);
  // The server's word on the inversion, until this image has an edit: then the edit's label stays.
  if (view.status && !state.edited) find("#fd-live-label").textContent = view.status;
  draw();
  if (view.busy) poll();
}

function draw() {
  const canvas = find("#fd-points canvas");
  const view = state.view;
  if (!canvas || !view || !view.src) return;
  const zoom = view.zoom;
  // Setting a canvas's size reallocates it, even to the same size: only when it changes.
  if (canvas.width !== view.width * zoom) canvas.width = view.width * zoom;
  if (canvas.height !== view.height * zoom) canvas.height = view.height * zoom;
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;
  if (state.base) context.drawImage(state.base, 0, 0, canvas.width, canvas.height);
  const radius = Math.max(3, Math.min(canvas.width, canvas.height) / 100);
  const centre = ([x, y]) => [(x + 0.5) * zoom, (y + 0.5) * zoom];
  const dot = ([x, y], colour, number) => {
    context.fillStyle = colour;
    context.beginPath();
    context.arc(x, y, radius, 0, 2 * Math.PI);
    context.fill();
    context.fillStyle = "#fff";
    context.fillText(String(number), x + radius + 1, y + radius + 10);
  };
  context.lineWidth = Math.max(1, radius / 2);
  context.strokeStyle = "#fff";
  context.font = "12px sans-serif";
  const points = state.points;
  for (let i = 0; i + 1 < points.length; i += 2) {
    const handle = centre(points[i]);
    const target = centre(points[i + 1]);
    context.beginPath();
    context.moveTo(...handle);
    context.lineTo(...target);
    context.stroke();
    dot(handle, "rgb(230, 40, 40)", i / 2 + 1);
    dot(target, "rgb(40, 90, 230)", i / 2 + 1);
  }
  if (points.length % 2) dot(centre(points[points.length - 1]), "rgb(230, 40, 40)", (points.length + 1) / 2);
}

function pixel(event) {
  const box = find("#fd-points canvas").getBoundingClientRect();
  const { width, height } = state.view;
  const x = Math.floor(((event.clientX - box.left) / box.width) * width);
  const y = Math.floor(((event.clientY - box.top) / box.height) * height);
  return [Math.min(Math.max(x, 0), width - 1), Math.min(Math.max(y, 0), height - 1)];
}

// The target (an arrow's head) under the pointer, or -1: within 4% of the image's longer side.
function targetAt([x, y]) {
  const reach = Math.max(1.5, 0.04 * Math.max(state.view.width, state.view.height));
  for (let i = 1; i < state.points.length; i += 2) {
    const [tx, ty] = state.points[i];
    if (Math.hypot(tx - x, ty - y) <= reach) return i;
  }
  return -1;
}

element.addEventListener("pointerdown", (event) => {
  if (event.button !== 0 || state.dragging || !state.view || !event.target.matches("#fd-points canvas")) return;
  event.preventDefault();
  event.target.setPointerCapture(event.pointerId);
  state.pointer = event.pointerId; // one pointer drags: a second finger is ignored until it ends
  const point = pixel(event);
  const points = state.points;
  // A press on an arrow's head grabs it, unless a handle waits for its target: then it is that.
  state.grab = points.length % 2 === 0 ? targetAt(point) : -1;
  state.created = false;
  state.moved = false;
  if (state.grab < 0) {
    if (points.length % 2 === 1) {
      points.push(point); // the waiting handle's target, where the button went down
    } else {
      // Moving or copying takes one drag: a new one starts it again (as a click does, app.add_point).
      if (state.view.mode !== "drag" && points.length >= 2) points.length = 0;
      points.push(point, point.slice());
      state.created = true;
    }
    state.grab = points.length - 1;
  }
  state.dragging = true;
  draw();
});

element.addEventListener("pointermove", (event) => {
  if (!state.dragging || event.pointerId !== state.pointer) return;
  const point = pixel(event);
  const old = state.points[state.grab];
  if (old[0] === point[0] && old[1] === point[1]) return;
  state.points[state.grab] = point;
  state.moved = true;
  draw();
  send();
});

function release(event) {
  if (!state.dragging || event.pointerId !== state.pointer) return;
  state.dragging = false;
  if (state.created && !state.moved) state.points.pop(); // a click: the handle waits for its target
  draw();
  send(true);
}
element.addEventListener("pointerup", release);
element.addEventListener("pointercancel", release);

function send(final = false) {
  state.queued = { points: state.points.map((p) => p.slice()), final: final || (state.queued?.final ?? false) };
  pump();
}

async function pump() {
  if (state.inFlight || !state.queued) return;
  const message = state.queued;
  const token = state.token;
  state.queued = null;
  state.inFlight = true;
  let reply;
  try {
    reply = await server.live_move({ token, points: message.points });
  } catch (error) {
    reply = { error: String(error) };
  }
  state.inFlight = false;
  if (token !== state.token) {
    // An answer about the session this page had before (another image): nothing to show.
  } else if (reply.error) {
    find("#fd-live-label").textContent = "Error: " + reply.error;
  } else {
    show("#fd-preview img", reply.preview);
    if (reply.busy || reply.job > state.shown) poll(); // a job may have ended before the reply left
  }
  if (message.final && !state.queued && !state.dragging) trigger("release");
  pump();
}

async function poll() {
  state.pollWanted = true;
  if (state.polling || !state.token) return;
  state.polling = true;
  try {
    for (;;) {
      state.pollWanted = false;
      const token = state.token;
      let reply;
      try {
        reply = await server.live_poll({ token, after: state.shown });
      } catch (error) {
        reply = { error: String(error) };
      }
      if (token !== state.token) continue; // a new image: ask again for its own results
      if (reply.error) {
        find("#fd-live-label").textContent = "Error: " + reply.error;
        break;
      }
      const result = reply.result;
      if (result && result.seq > state.shown) {
        state.shown = result.seq;
        if (result.image) {
          show("#fd-live img", result.image);
          state.edited = true;
        }
        find("#fd-live-label").textContent = result.label;
      }
      if (!reply.busy && !state.pollWanted) break; // the next live_move that leaves work asks again
    }
  } finally {
    state.polling = false;
  }
}

watch("value", adopt);
adopt();
