/* Serves a SavedModel through TensorFlow's C API: the C++ SavedModel loader (LoadSavedModel, tag "serve") that
 * TF Serving is built on, in a process with no Python. Used by tests/serving_c_api_test.py.
 *
 *   serve_saved_model EXPORT_DIR COMMAND...
 *
 * COMMANDs, read left to right:
 *   feed NAME DTYPE RANK DIM_1 .. DIM_RANK FILE   add an input: the graph tensor NAME ("sample_num:0", from the
 *                                                 signature's SignatureDef), DTYPE float32|int32|int64, its shape,
 *                                                 and FILE holding its raw little-endian values (row-major)
 *   fetch NAME FILE                               add an output: tensor NAME, written to FILE as raw values
 *   run                                           TF_SessionRun on the feeds and fetches added since the last run
 *
 * stdout: one line per run, "RUN <index> OK", then per fetch "FETCH <name> <dtype enum> <dim>...", or
 * "RUN <index> ERROR <TF_Code> <message on one line>" when TF_SessionRun fails (the graph's own error text).
 * Exit status: 0 when the model loaded and every command was well formed (whatever each run returned), 2 when the
 * SavedModel did not load, 64 on a usage error, 74 on a file error.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tensorflow/c/c_api.h"

#define MAX_TENSORS 32

typedef struct {
  TF_Output outputs[MAX_TENSORS];
  TF_Tensor* values[MAX_TENSORS];
  const char* names[MAX_TENSORS];
  const char* files[MAX_TENSORS];
  int count;
} TensorList;

static void die(int status, const char* what, const char* detail) {
  fprintf(stderr, "serve_saved_model: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
  exit(status);
}

static void free_tensor(void* data, size_t length, void* arg) {
  (void)length;
  (void)arg;
  free(data);
}

/* "name:index" -> the graph operation's output; exits when the graph has no such operation. */
static TF_Output resolve(TF_Graph* graph, const char* tensor_name) {
  char op_name[512];
  const char* colon = strrchr(tensor_name, ':');
  size_t length = colon ? (size_t)(colon - tensor_name) : strlen(tensor_name);
  if (length >= sizeof(op_name)) die(64, "tensor name too long", tensor_name);
  memcpy(op_name, tensor_name, length);
  op_name[length] = '\0';
  TF_Output output;
  output.oper = TF_GraphOperationByName(graph, op_name);
  output.index = colon ? atoi(colon + 1) : 0;
  if (output.oper == NULL) die(64, "no such tensor in the graph", tensor_name);
  return output;
}

static TF_DataType parse_dtype(const char* name) {
  if (strcmp(name, "float32") == 0) return TF_FLOAT;
  if (strcmp(name, "int32") == 0) return TF_INT32;
  if (strcmp(name, "int64") == 0) return TF_INT64;
  die(64, "dtype must be float32, int32 or int64", name);
  return TF_FLOAT;
}

static TF_Tensor* read_tensor(TF_DataType dtype, const int64_t* dims, int rank, const char* path) {
  size_t count = 1;
  for (int i = 0; i < rank; ++i) count *= (size_t)dims[i];
  size_t bytes = count * TF_DataTypeSize(dtype);
  void* data = malloc(bytes ? bytes : 1);
  FILE* file = fopen(path, "rb");
  if (data == NULL || file == NULL) die(74, "cannot read", path);
  if (bytes && fread(data, 1, bytes, file) != bytes) die(74, "file shorter than its shape says", path);
  fclose(file);
  return TF_NewTensor(dtype, dims, rank, data, bytes, free_tensor, NULL);
}

static void write_tensor(const TF_Tensor* tensor, const char* path) {
  FILE* file = fopen(path, "wb");
  size_t bytes = TF_TensorByteSize(tensor);
  if (file == NULL || fwrite(TF_TensorData(tensor), 1, bytes, file) != bytes) die(74, "cannot write", path);
  fclose(file);
}

static void clear(TensorList* list) {
  for (int i = 0; i < list->count; ++i) {
    if (list->values[i]) TF_DeleteTensor(list->values[i]);
    list->values[i] = NULL;
  }
  list->count = 0;
}

int main(int argc, char** argv) {
  if (argc < 3) die(64, "usage: serve_saved_model EXPORT_DIR (feed|fetch|run ...)...", NULL);
  TF_Status* status = TF_NewStatus();
  TF_Graph* graph = TF_NewGraph();
  TF_SessionOptions* options = TF_NewSessionOptions();
  const char* tags[] = {"serve"};
  TF_Session* session = TF_LoadSessionFromSavedModel(options, NULL, argv[1], tags, 1, graph, NULL, status);
  if (TF_GetCode(status) != TF_OK) die(2, "TF_LoadSessionFromSavedModel failed", TF_Message(status));

  TensorList feeds = {0}, fetches = {0};
  int run_index = 0;
  for (int i = 2; i < argc;) {
    if (strcmp(argv[i], "feed") == 0) {
      if (i + 3 >= argc) die(64, "feed needs NAME DTYPE RANK DIMS... FILE", NULL);
      int rank = atoi(argv[i + 3]);
      if (rank < 0 || rank > 8 || i + 4 + rank >= argc) die(64, "bad feed rank or missing FILE", argv[i + 1]);
      if (feeds.count == MAX_TENSORS) die(64, "too many feeds", NULL);
      int64_t dims[8];
      for (int d = 0; d < rank; ++d) dims[d] = atoll(argv[i + 4 + d]);
      feeds.outputs[feeds.count] = resolve(graph, argv[i + 1]);
      feeds.values[feeds.count] = read_tensor(parse_dtype(argv[i + 2]), dims, rank, argv[i + 4 + rank]);
      feeds.count++;
      i += 5 + rank;
    } else if (strcmp(argv[i], "fetch") == 0) {
      if (i + 2 >= argc) die(64, "fetch needs NAME FILE", NULL);
      if (fetches.count == MAX_TENSORS) die(64, "too many fetches", NULL);
      fetches.outputs[fetches.count] = resolve(graph, argv[i + 1]);
      fetches.names[fetches.count] = argv[i + 1];
      fetches.files[fetches.count] = argv[i + 2];
      fetches.values[fetches.count] = NULL;
      fetches.count++;
      i += 3;
    } else if (strcmp(argv[i], "run") == 0) {
      TF_SessionRun(session, NULL, feeds.outputs, feeds.values, feeds.count, fetches.outputs, fetches.values,
                    fetches.count, NULL, 0, NULL, status);
      if (TF_GetCode(status) == TF_OK) {
        printf("RUN %d OK\n", run_index);
        for (int f = 0; f < fetches.count; ++f) {
          TF_Tensor* value = fetches.values[f];
          printf("FETCH %s %d", fetches.names[f], (int)TF_TensorType(value));
          for (int d = 0; d < TF_NumDims(value); ++d) printf(" %lld", (long long)TF_Dim(value, d));
          printf("\n");
          write_tensor(value, fetches.files[f]);
        }
      } else {
        char message[4096];
        snprintf(message, sizeof(message), "%s", TF_Message(status));
        for (char* c = message; *c; ++c)
          if (*c == '\n' || *c == '\r') *c = ' ';
        printf("RUN %d ERROR %d %s\n", run_index, (int)TF_GetCode(status), message);
      }
      fflush(stdout);
      clear(&feeds);
      clear(&fetches);
      run_index++;
      i += 1;
    } else {
      die(64, "unknown command (feed, fetch or run)", argv[i]);
    }
  }

  TF_CloseSession(session, status);
  TF_DeleteSession(session, status);
  TF_DeleteSessionOptions(options);
  TF_DeleteGraph(graph);
  TF_DeleteStatus(status);
  return 0;
}
