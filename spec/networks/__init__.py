"""The networks a JobSpec can name, as their typed parameters and their size (parameters, and the activations
autograd keeps per sample), computed without torch from the same layer arithmetic as models/ builds them.
spec.architectures lists them; models/ builds them; spec.budget prices a job with them."""
