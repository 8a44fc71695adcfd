/* Runs a fuzz target over files without libFuzzer: each argument is an
 * input file or a folder of them. Linked with a target compiled normally
 * (or with sanitizers), it replays the regression inputs in `make test`. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define REPLAY_INPUT_BYTES_MAX (64u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

/* One input, in an allocation of exactly its size (as libFuzzer hands it
 * over, so a read past its end is an error under AddressSanitizer). */
static int replay_file(const char *path)
{
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        fprintf(stderr, "replay: cannot open %s\n", path);
        return -1;
    }
    struct stat st;
    if (fstat(fileno(fp), &st) || st.st_size > REPLAY_INPUT_BYTES_MAX) {
        fprintf(stderr, "replay: %s: cannot stat it or larger than %u bytes\n", path, REPLAY_INPUT_BYTES_MAX);
        fclose(fp);
        return -1;
    }
    size_t n = (size_t)st.st_size;
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf || fread(buf, 1, n, fp) != n) {
        fprintf(stderr, "replay: cannot read %s\n", path);
        free(buf);
        fclose(fp);
        return -1;
    }
    fclose(fp);
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    return 0;
}

static int replay_path(const char *path, int *count)
{
    struct stat st;
    if (stat(path, &st)) {
        fprintf(stderr, "replay: %s does not exist\n", path);
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        (*count)++;
        return replay_file(path);
    }
    struct dirent **ents;
    int n = scandir(path, &ents, NULL, alphasort), rc = n < 0 ? -1 : 0;
    for (int i = 0; i < n; i++) {
        char sub[4096];
        if (ents[i]->d_name[0] != '.' && rc == 0) {
            snprintf(sub, sizeof(sub), "%s/%s", path, ents[i]->d_name);
            rc = replay_path(sub, count);
        }
        free(ents[i]);
    }
    free(ents);
    return rc;
}

int main(int argc, char **argv)
{
    if (LLVMFuzzerInitialize)
        LLVMFuzzerInitialize(&argc, &argv);
    int count = 0;
    for (int i = 1; i < argc; i++)
        if (replay_path(argv[i], &count))
            return 1;
    printf("replayed %d inputs\n", count);
    return 0;
}
