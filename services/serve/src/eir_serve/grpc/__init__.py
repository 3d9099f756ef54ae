"""The Open Inference Protocol's ``GRPCInferenceService`` (server.py); the message classes are
generated from grpc_predict_v2.proto by scripts/gen_grpc.sh."""
