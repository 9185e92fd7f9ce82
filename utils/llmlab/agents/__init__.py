"""Agents (chapter 07): a ReAct loop that plans, calls tools and remembers.

tools   the tool registry (JSON-schema arguments, validated; failures recorded, never raised) and
        the tools: a calculator that parses arithmetic with ast, dates, Python in the course's
        sandbox, and search over a knowledge base
react   the loop: thought, action, observation; the step parser and the dispatch
constrained
        decoding a tool call that parses by construction: the schema's template, the model
        filling only its holes with the most likely valid token
tasks   verifiable tasks for an agent (arithmetic, dates, lookups, lookups with arithmetic,
        Python), each with the tools it needs and a gold plan of calls, and their scoring
planning
        plan, then act: a planner writes every step (tool calls with #n references to earlier
        results) and a worker runs the plans in batches
memory  a short-term window of the conversation, a long-term store searched by meaning, and
        scripted dialogues whose facts an agent must recall
injection
        prompt injection: orders planted in the knowledge base, and how often an agent obeys
traces  the transcripts a good agent would write (the gold plans run through the real tools),
        and the SFT examples that teach them, one per model turn
"""
