"""The user–item train graph, below both the sampler and the model.

    torch_graph.py  graph types without DGL: ``BipartiteGraph`` (a whole graph) and ``Block`` (one sampled
                    layer), node/edge type names shared with DGL's heterographs
    train_graph.py  TRAIN interactions -> a DGL heterograph or a ``BipartiteGraph`` (``build_train_graph``)
    shared.py       one ``BipartiteGraph`` per machine: written once, memory-mapped by every local rank
"""
