"""The console's one stylesheet, served by the gateway itself (no external assets, no inline styles)."""

from __future__ import annotations

CONSOLE_CSS = """
:root { color-scheme: light dark; --fg: #1b1f24; --bg: #ffffff; --muted: #57606a; --line: #d0d7de;
        --accent: #0b5cad; --bad: #a40e26; --good: #116329; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #e6edf3; --bg: #0d1117; --muted: #9da7b3; --line: #30363d; --accent: #6cb6ff; --bad: #ff8182;
          --good: #56d364; }
}
* { box-sizing: border-box; }
body { margin: 0; font: 16px/1.5 system-ui, sans-serif; color: var(--fg); background: var(--bg); }
a { color: var(--accent); }
a:focus, button:focus, input:focus, select:focus { outline: 3px solid var(--accent); outline-offset: 2px; }
.skip { position: absolute; left: -10000px; }
.skip:focus { left: 1rem; top: 1rem; background: var(--bg); padding: .5rem; }
header { border-bottom: 1px solid var(--line); padding: .5rem 1rem; }
header nav { display: flex; flex-wrap: wrap; gap: 1rem; align-items: center; justify-content: space-between; }
header ul { list-style: none; display: flex; flex-wrap: wrap; gap: 1rem; margin: 0; padding: 0; }
.brand { font-weight: 700; }
main { padding: 1rem; max-width: 72rem; }
h1 { font-size: 1.6rem; margin: .5rem 0 1rem; }
h2 { font-size: 1.2rem; margin: 1.5rem 0 .5rem; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
caption { text-align: left; font-weight: 600; padding: .25rem 0; }
th, td { border: 1px solid var(--line); padding: .3rem .5rem; text-align: left; vertical-align: top; }
th { background: color-mix(in srgb, var(--line) 35%, transparent); }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; }
dt { font-weight: 600; }
dd { margin: 0; overflow-wrap: anywhere; }
form.filters { display: flex; flex-wrap: wrap; gap: .75rem; align-items: end; margin-bottom: 1rem; }
form.filters label { display: flex; flex-direction: column; font-size: .85rem; }
input, select, button { font: inherit; padding: .3rem .5rem; }
button { cursor: pointer; border: 1px solid var(--line); border-radius: 4px; background: var(--bg); color: var(--fg); }
button.primary { background: var(--accent); color: #fff; border-color: var(--accent); }
.error { color: var(--bad); font-weight: 600; }
.ok { color: var(--good); }
.muted { color: var(--muted); }
code { font-size: .9em; }
body.embedded main { padding: .25rem .5rem; max-width: none; }
h1.panel-title { font-size: 1rem; margin: 0 0 .25rem; }
body.metrics main { max-width: none; }
section.panel { display: inline-block; vertical-align: top; width: min(100%, 46rem); margin: 0 1rem 1rem 0; }
h3 { font-size: 1rem; margin: .5rem 0 .25rem; }
svg.chart { width: 100%; height: auto; display: block; }
svg.swatch { width: .75em; height: .75em; }
table.legend { font-size: .8rem; margin-top: .25rem; }
body.embedded p.muted { font-size: .8rem; margin: 0 0 .25rem; }
"""
