/* The smallest C client: copy 1 MiB through the CBDMA device model and verify it.
 * cc Examples/c/copy.c $(pkg-config --cflags --libs netdma) -o copy && ./copy */
#include <netdma.h>
#include <stdio.h>
#include <string.h>

static int fail(void) {
    fprintf(stderr, "netdma: %s\n", netdma_last_error());
    return 1;
}

int main(void) {
    netdma_open_params params = NETDMA_OPEN_PARAMS_INIT;
    params.source = NETDMA_SOURCE_MODEL; /* NETDMA_SOURCE_AUTO: the engines bound to vfio-pci, else the model */
    netdma_engines *dma;
    netdma_channel *channel;
    netdma_queue *queue;
    netdma_buffer src, dst;
    if (netdma_open(&params, &dma) < 0 || netdma_channel_alloc(dma, -1, NULL, 0, &channel) < 0 ||
        netdma_queue_create(channel, NULL, &queue) < 0 || netdma_mem_alloc(dma, 1 << 20, -1, &src) < 0 ||
        netdma_mem_alloc(dma, 1 << 20, -1, &dst) < 0)
        return fail();
    for (size_t i = 0; i < src.length; i++) ((unsigned char *)src.addr)[i] = (unsigned char)(i * 7 + 1);
    if (netdma_enqueue_copy(queue, src.iova, dst.iova, 1 << 20, NETDMA_OP_SUBMIT) < 0) return fail();
    bool failed = false;
    while (netdma_completed(queue, 1, NULL, &failed) == 0 && !failed) {}
    if (failed || memcmp(src.addr, dst.addr, src.length) != 0) {
        fprintf(stderr, "the copy failed\n");
        return 1;
    }
    netdma_engine_info info;
    netdma_engine_info_get(dma, 0, &info);
    printf("copied 1 MiB on %s and verified it\n", info.label);
    netdma_queue_destroy(queue);
    netdma_channel_free(channel);
    return netdma_close(dma) < 0;
}
