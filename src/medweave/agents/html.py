"""A workflow run as one self-contained HTML page: the summary, then per case the answer (or the
abstention), the rollouts' agreement, the evidence it rests on and every step (tool, inputs, output,
time, error)."""

from __future__ import annotations

import json
from typing import Any

from jinja2 import Environment

PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>medweave agent: {{ wf.name }}</title>
<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}
.abstain{color:#a60}.right{color:#070}.wrong{color:#b00}pre{white-space:pre-wrap;margin:0;font-size:12px;max-height:12em;overflow:auto}
details{margin:.3em 0}</style></head><body>
<h1>{{ wf.name }}</h1>
<p><b>Question:</b> {{ wf.question }}<br><b>Planner:</b> {{ wf.planner.kind }} &middot; <b>decider:</b> {{ wf.decider.kind }}
&middot; <b>rollouts:</b> {{ wf.rollouts.n }} (abstain below {{ wf.rollouts.abstain_below }} agreement)</p>
<h2>Summary</h2><table>{% for k, v in summary.items() %}<tr><th>{{ k }}</th><td>{{ fmt(v) }}</td></tr>{% endfor %}</table>
{% if decider %}<h2>Decider</h2><pre>{{ dumps(decider) }}</pre>{% endif %}
<h2>Cases</h2>
{% for r in records %}<section id="case-{{ r.case_id }}"><h3>case {{ r.case_id }}:
{% if r.abstained %}<span class="abstain">abstained</span> (majority {{ r.majority or 'none' }}){% else %}
<span class="{{ 'right' if r.truth == r.answer else ('wrong' if r.truth else '') }}">{{ r.answer }}</span>{% endif %}
{% if r.truth %} &middot; truth {{ r.truth }}{% endif %}</h3>
<p>agreement {{ '%.2f'|format(r.agreement) }} &middot; {% if r.probability is not none %}probability {{ '%.3f'|format(r.probability) }} &middot; {% endif %}
{{ r.steps }} steps &middot; {{ '%.2f'|format(r.seconds) }} s</p>
<table><tr><th>evidence</th><th>value</th></tr>{% for k, v in r.evidence.items() %}<tr><td>{{ k }}</td>
<td>{{ 'absent' if v is none else '%.3f'|format(v) }}</td></tr>{% endfor %}</table>
{% for ro in r.rollouts %}<details><summary>rollout {{ ro.rollout }}: {{ 'no answer' if ro.answer is none else ('yes' if ro.answer else 'no') }}
({{ ro.steps|length }} steps)</summary><table><tr><th>#</th><th>tool</th><th>inputs</th><th>output</th><th>s</th><th>error</th></tr>
{% for s in ro.steps %}<tr><td>{{ loop.index }}</td><td>{{ s.tool }}{% if s.reply %}<pre>model: {{ s.reply }}</pre>{% endif %}</td>
<td><pre>{{ dumps(s.arguments) }}</pre></td><td><pre>{{ dumps(s.output) }}</pre></td><td>{{ s.seconds }}</td><td>{{ s.error or '' }}</td></tr>
{% endfor %}</table><pre>decider: {{ dumps(ro.decider) }}</pre></details>{% endfor %}</section>
{% endfor %}</body></html>"""


def _fmt(v: Any) -> str:
    if isinstance(v, dict) and "value" in v:
        return f"{v['value']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}] (n={v['n']})"
    if isinstance(v, float):
        return f"{v:.3f}"
    return "-" if v is None else str(v)


def render_html(result: dict[str, Any]) -> str:
    env = Environment(autoescape=True)
    return env.from_string(PAGE).render(wf=result["workflow"], summary=result["summary"], records=result["records"],
                                        decider=result.get("decider"), fmt=_fmt,
                                        dumps=lambda o: json.dumps(o, indent=1, default=str) if o is not None else "")
