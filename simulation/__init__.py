"""fedquilt.simulation: a whole federation in one process, for choosing a rule and hyper-parameters.

The same rule halves (``strategies``), the same trainer (``agent.trainer.LoraTrainer``) and the same
secure-sum arithmetic (``secure_agg``'s ``ClientSession`` / ``ServerSession``, in memory) as a
deployment; sites are trained one after another. Neither the agent nor the coordinator imports this
package.
"""
