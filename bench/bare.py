"""The baseline for bench/run: the least a Flask app can do for /message.

One route, a fixed Plivo Message XML answer, nothing else: no signature
check, no parsing, no rules, no database. bench/run serves it under gunicorn
with the same settings as the service, so the ratio of the two throughputs
is the cost of what the service does on top of Flask + gunicorn.
"""

from flask import Flask, Response

REPLY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<Response><Message src="14155550100" dst="14155550123" type="sms">'
    "We are open 9am-5pm, Monday to Friday.</Message></Response>"
)

app = Flask(__name__)


@app.route("/message", methods=["GET", "POST"])
def message():
    return Response(REPLY, content_type="application/xml; charset=utf-8")
