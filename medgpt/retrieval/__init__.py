"""Answers grounded in a folder of documents: reading (documents), passages (chunking), ranking (search), the
kept-up-to-date index (knowledge) and the prompt that makes the model cite its passages (grounding). The chat
engine uses it when given a knowledge base; every front end gets it from there."""
