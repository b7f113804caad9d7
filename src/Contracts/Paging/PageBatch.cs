namespace SEmigrate.Contracts.Paging;

/// <summary>A Store or PageOut frame built in place: page records are encoded straight into one
/// buffer after room for the frame header, which the sender fills in when it sends.</summary>
public sealed class PageBatch(int capacityBytes)
{
    private readonly byte[] buffer = new byte[capacityBytes + PageFrame.HeaderSize + PageRecord.HeaderSize + PageRecord.SealedBodySize];
    private int length = PageFrame.HeaderSize;

    public int Count { get; private set; }

    public int Length => length;

    public bool IsFull => length >= capacityBytes;

    /// <summary>Room for one more record (always enough for the largest).</summary>
    public Span<byte> Next => buffer.AsSpan(length);

    /// <summary>Counts a record written into <see cref="Next"/>.</summary>
    public void Advance(int bytes)
    {
        length += bytes;
        Count++;
    }

    /// <summary>The whole frame, its header written now.</summary>
    public ReadOnlyMemory<byte> Frame(FrameKind kind, Guid vm, ulong requestId)
    {
        PageFrame.WriteHeader(buffer, kind, vm, requestId, Count);
        return buffer.AsMemory(0, length);
    }

    public void Clear()
    {
        length = PageFrame.HeaderSize;
        Count = 0;
    }
}
