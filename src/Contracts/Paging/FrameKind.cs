namespace SEmigrate.Contracts.Paging;

/// <summary>Message kinds of the page protocol. Values are wire format: never renumber.</summary>
public enum FrameKind : byte
{
    Store = 1,
    StoreAck = 2,
    Fetch = 3,
    Pages = 4,
    PageOut = 5,
    PageOutAck = 6,
    Release = 7,
    Released = 8,
    Usage = 9,
    UsageReport = 10,
    StartVm = 11,
    VmStarted = 12,
    ChannelKey = 13,
    ChannelKeyAccepted = 14,
    StoreAcks = 15,
    Error = 255,
}

/// <summary>Why a request failed. Values are wire format.</summary>
public enum PageError : ushort
{
    Malformed = 1,
    UnknownVm = 2,
    UnknownPage = 3,
    StoreFull = 4,
    Unsupported = 5,
    Internal = 6,

    /// <summary>The request lacks the VM's capability (see StartVm).</summary>
    Forbidden = 7,

    /// <summary>StartVm with a capability whose VM was released here: its migration is over (a replay).</summary>
    Ended = 8,
}
