"""Direct feedback: the output error is sent to every hidden layer through its own fixed matrix."""
