// Model output -> safe DOM: Markdown through markdown-it, then DOMPurify, returned as DOM
// nodes (never assigned as HTML strings). Tables from the model are HTML and survive the
// sanitizer; scripts, event handlers and javascript: links do not. Images may only be the
// page's own figure crops (`images/page-P-N.png`), fetched with the API key; any other image
// is replaced by its alt text, so a document cannot make the browser load anything from
// elsewhere.

const FIGURE = /^images\/page-(\d+)-(\d+)\.png$/;

let markdown = null;

function md() {
  if (markdown === null) {
    // html: DeepSeek writes tables as HTML; DOMPurify cleans it afterwards.
    markdown = window.markdownit({ html: true, linkify: false, typographer: false });
  }
  return markdown;
}

// Render untrusted Markdown to a sanitized DocumentFragment. `loadFigure(name, img)` is
// called for each figure crop the text links to.
export function renderMarkdown(text, loadFigure) {
  const fragment = window.DOMPurify.sanitize(md().render(text || ""), {
    RETURN_DOM_FRAGMENT: true,
    FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "iframe", "object", "embed"],
    FORBID_ATTR: ["style"],
  });
  for (const img of [...fragment.querySelectorAll("img")]) {
    const src = img.getAttribute("src") || "";
    img.removeAttribute("src");
    img.removeAttribute("srcset");
    if (FIGURE.test(src)) {
      img.classList.add("figure");
      img.alt = img.alt || src;
      loadFigure(src, img);
    } else {
      img.replaceWith(document.createTextNode(img.getAttribute("alt") || ""));
    }
  }
  for (const link of fragment.querySelectorAll("a")) {
    link.target = "_blank";
    link.rel = "noopener noreferrer nofollow";
  }
  return fragment;
}

// The page's blocks as text segments, each with the indexes of its blocks (boxes).
export function segmentsOf(page) {
  return lineSegmentsOf(page) || spanSegmentsOf(page);
}

// Engines that read lines (RapidOCR, DeepSeek's "OCR this image") give one block per box
// and Markdown lines that join the blocks of one visual line with spaces, in block order,
// with a blank line between paragraphs. Then a segment is one Markdown line with the boxes
// that make it up. Null when the page's blocks do not line up with its Markdown so.
function lineSegmentsOf(page) {
  const blocks = page.blocks;
  if (!blocks.every((block) => block.label === "text" && !block.text.includes("\n"))) return null;
  const segments = [];
  let next = 0;
  let paragraph = false;
  for (const line of page.markdown.split("\n")) {
    if (!line.trim()) {
      paragraph = segments.length > 0;
      continue;
    }
    const indexes = [];
    let joined = "";
    while (next < blocks.length && joined !== line) {
      const text = blocks[next].text.trim();
      if (!text) {
        next += 1;
        continue;
      }
      const candidate = joined ? `${joined} ${text}` : text;
      if (!line.startsWith(candidate)) return null;
      joined = candidate;
      indexes.push(next);
      next += 1;
    }
    if (joined !== line) return null;
    segments.push({ label: "text", text: line, figure: null, blocks: indexes, paragraph });
    paragraph = false;
  }
  return next === blocks.length || blocks.slice(next).every((block) => !block.text.trim()) ? segments : null;
}

// Layout output (DeepSeek's grounding): consecutive blocks of one grounded span (same label
// and text, one box each) become one segment with several boxes. Image blocks each stand
// alone and are numbered 1, 2, ... in order, as the service names their crops.
function spanSegmentsOf(page) {
  const segments = [];
  let images = 0;
  page.blocks.forEach((block, index) => {
    if (block.label === "image") {
      images += 1;
      segments.push({ label: "image", text: "", figure: `images/page-${page.page}-${images}.png`, blocks: [index] });
      return;
    }
    const last = segments[segments.length - 1];
    if (last && !last.figure && last.label === block.label && last.text === block.text && block.text) {
      last.blocks.push(index);
    } else {
      segments.push({ label: block.label, text: block.text, figure: null, blocks: [index] });
    }
  });
  return segments;
}

const COLOURS = {
  title: "#d9480f",
  sub_title: "#e67700",
  text: "#1c7ed6",
  table: "#2b8a3e",
  image: "#9c36b5",
  figure: "#9c36b5",
  image_caption: "#c2255c",
  table_caption: "#c2255c",
  caption: "#c2255c",
  equation: "#f08c00",
  formula: "#f08c00",
  header: "#868e96",
  footer: "#868e96",
  page_header: "#868e96",
  page_footer: "#868e96",
  page_number: "#868e96",
  list: "#0c8599",
  list_item: "#0c8599",
  code: "#5f3dc4",
};

export function colourOf(label) {
  if (COLOURS[label]) return COLOURS[label];
  let hash = 0;
  for (const char of label) hash = (hash * 31 + char.charCodeAt(0)) >>> 0;
  return `hsl(${hash % 360} 65% 42%)`;
}
