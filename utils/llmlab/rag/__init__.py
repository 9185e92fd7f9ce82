"""Retrieval-augmented generation (chapter 07): retrieve first, then generate from what was found.

kb        a seeded fictional knowledge base (documents, questions, gold answers and evidence)
          that no pretrained model can know, and the answer metrics (exact / contains match)
corpora   a real corpus: the standard library's docstrings
chunking  documents cut into passages: fixed windows, sentences, paragraphs, with overlap
embed     sentence embeddings from scratch (MiniLM's mean pooling), cached per corpus
index     exact search, FAISS Flat / IVF / HNSW, recall against exact, latency, test vectors
bm25      BM25 from its formula (okapi and lucene idf), equal to rank_bm25 / bm25s
fusion    reciprocal rank fusion and min-max score fusion of several rankings
retriever the hybrid retriever (dense + BM25, fused by RRF) that later notebooks search with
reader    the generation half: numbered-source prompts, cited replies, their scores, and the
          fine-tuning examples that teach a small model to read
metrics   recall@k, hit@k, reciprocal rank, and their means over queries
store     a persistent vector store (FAISS + SQLite): atomic changes, safe against crashes
cache     a semantic cache: the nearest cached question above a cosine threshold
frameworks
          the same retrieval in LangChain: course chunks as Documents, rankings mapped back to
          chunks, and how often two pipelines' rankings agree
"""
