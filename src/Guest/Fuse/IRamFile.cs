namespace SEmigrate.Guest.Fuse;

/// <summary>What a FUSE-served RAM file reads from and writes to (the main host's pager). A read must
/// fill all of <c>data</c> or throw: the kernel zero-fills a short read, which would be wrong guest
/// memory. Calls come concurrently, from the thread pool.</summary>
public interface IRamFile
{
    long Size { get; }

    ValueTask ReadAsync(long offset, Memory<byte> data);

    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data);
}
