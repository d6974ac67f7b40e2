"""Runnable examples of the LangChain integration.

- ``python -m langchain_promptdistill.examples.long_context_rag``: a RAG chain
  that hands the model 50 retrieved chunks of Python's documentation at once.
- ``python_docs``: the document collection, a text splitter and a BM25
  retriever that the example and the cookbook notebooks share. None of them
  downloads anything.
"""
