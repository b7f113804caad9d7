using MassTransit;
using SEmigrate.TestSupport;

namespace SEmigrate.Activities.Tests;

/// <summary>A MassTransit bus on the test broker, for the events activities publish.</summary>
internal static class TestBus
{
    public static async Task<IBusControl> StartAsync(RabbitMqFixture rabbit)
    {
        var bus = Bus.Factory.CreateUsingRabbitMq(cfg =>
        {
            var user = rabbit.Uri.UserInfo.Split(':');
            cfg.Host(rabbit.Uri.Host, (ushort)rabbit.Uri.Port, "/", h =>
            {
                h.Username(user[0]);
                h.Password(user[1]);
            });
        });
        await bus.StartAsync(TestContext.Current.CancellationToken);
        return bus;
    }
}
